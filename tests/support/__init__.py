"""Test scaffolding: mock servers and harnesses (never shipped in the package)."""
