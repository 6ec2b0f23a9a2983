"""forensics capability."""
