"""hpcfs: remote HPC storage as local file trees."""
import _signal  # not ``signal``: its enum import alone takes longer than a quick Ctrl-C
import os
import sys

__version__ = "0.1.0"


def exit_interrupted(signum, frame):
    """Ctrl-C while the command is still loading: nothing to clean up yet, so one line and exit 130
    (Python would print a KeyboardInterrupt traceback from whichever import it was in)."""
    os.write(sys.stderr.fileno(), b"hpcfs: interrupted\n")
    os._exit(130)


# Only the commands (``hpcfs``, ``mount.hpcfs``, ``python -m hpcfs``, during which argv[0] is "-m") catch it
# this early; a program importing hpcfs keeps its own Ctrl-C.  ``cli.main`` restores Python's handler.
if os.path.basename(sys.argv[0] if sys.argv else "") in ("hpcfs", "mount.hpcfs", "-m"):
    _signal.signal(_signal.SIGINT, exit_interrupted)
