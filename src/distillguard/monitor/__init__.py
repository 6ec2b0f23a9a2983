"""monitor capability."""
