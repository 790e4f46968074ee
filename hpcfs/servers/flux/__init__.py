"""The local Flux RESTful API server (``hpcfs serve flux``)."""
from .server import FluxServer, add_arguments, serve

__all__ = ["FluxServer", "add_arguments", "serve"]
