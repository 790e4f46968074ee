"""The local DPhi Space EM API server (``hpcfs serve em``)."""
from .server import EMServer, add_arguments, serve

__all__ = ["EMServer", "add_arguments", "serve"]
