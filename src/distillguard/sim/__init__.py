"""sim capability."""
