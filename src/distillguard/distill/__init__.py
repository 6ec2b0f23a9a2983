"""distill capability."""
