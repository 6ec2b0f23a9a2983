"""models capability."""
