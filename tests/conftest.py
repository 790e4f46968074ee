"""Shared test setup: each protocol's server fixtures live in their own plugin module; ``fixtures_peers``
holds the real upstream servers."""
pytest_plugins = ["fixtures_uftp", "fixtures_firecrest", "fixtures_em", "fixtures_flux", "fixtures_peers"]
