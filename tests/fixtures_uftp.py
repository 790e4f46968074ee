"""pytest fixtures for the local uftp server (see docs/architecture.md)."""
