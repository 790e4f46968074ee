"""The local UNICORE/X REST server (``hpcfs serve unicore``)."""
from .server import UnicoreServer, add_arguments, serve

__all__ = ["UnicoreServer", "add_arguments", "serve"]
