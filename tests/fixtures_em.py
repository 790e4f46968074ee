"""pytest fixtures for the local em server (see docs/architecture.md)."""
