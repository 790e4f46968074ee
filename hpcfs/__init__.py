"""hpcfs: remote HPC storage as local file trees."""
__version__ = "0.1.0"
