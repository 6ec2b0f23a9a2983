"""Proof of distillation, for a suspect model the provider does not control.

- ``radioactivity``: statistics of the radioactivity tests (Sander et al. 2024): did the
  suspect learn from answers marked with our watermark key, and from which accounts?
- ``suspects``: loading, querying (OpenAI-compatible API, resumable) and feeding suspects; the
  ``prove_open_weights`` / ``prove_texts`` entry points.
- ``attribution``: watermark-free "which candidate teacher" test on answers to shared prompts.
- ``report``: the self-contained HTML (+ JSON) evidence report.
"""
