"""gateway capability."""
