"""The local FirecREST v2 server (``hpcfs serve firecrest``).

``server`` holds the API routes, ``auth`` the token endpoint, ``shell`` the commands the real server runs
over SSH, ``jobs`` the scheduler of transfer jobs and ``s3`` the staging area."""
from .server import FirecrestServer, add_arguments, serve

__all__ = ["FirecrestServer", "add_arguments", "serve"]
