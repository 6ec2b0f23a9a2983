"""Prevention: make served answers worth less to a student while honest users keep quality.

``task`` is the measurable arithmetic task, ``teacher`` the teacher trained on it; the
defences themselves live beside them (see docs/prevention.md).
"""
