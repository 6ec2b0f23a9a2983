"""distillguard: detect, prevent and prove unauthorized distillation through an LLM API."""

__version__ = "0.1.0"
