"""distillguard: detect, prevent and prove unauthorized knowledge distillation through an LLM API."""

__version__ = "0.1.0"
