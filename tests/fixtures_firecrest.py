"""pytest fixtures for the local firecrest server (see docs/architecture.md)."""
