"""The OpenAI-compatible gateway: ``create_app(settings)`` (see ``app.py`` for the wiring and
``routes_openai.py`` for a request's path)."""

from distillguard.gateway.app import create_app

__all__ = ["create_app"]
