"""The local UFTP server (``hpcfs serve uftp``): Auth-server REST endpoint and UFTPD in one process.

``server`` holds the Auth endpoint and the command port, ``session`` one FTP-like session per login,
``wire`` the data-channel framing and ``ssh_jwt`` the check of key-signed JWTs."""
from .server import UFTPServer, add_arguments, serve

__all__ = ["UFTPServer", "add_arguments", "serve"]
