"""Prevention: make served answers worth less to a distilling student, honest users unharmed.

``defences`` / ``perturb`` / ``antidistill`` are the defences the gateway serves as actions;
``task`` is the measurable arithmetic task and ``teacher`` the teacher trained on it, on which
``benchmarks/prevention.py`` measures what each defence costs a student (docs/prevention.md).
"""
