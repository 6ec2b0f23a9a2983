"""watermark capability."""
