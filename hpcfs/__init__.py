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


def _is_command() -> bool:
    """``hpcfs``, ``mount.hpcfs`` or ``python -m hpcfs`` (argv[0] is "-m" while the module is found); a
    program importing hpcfs keeps its own Ctrl-C."""
    return os.path.basename(sys.argv[0] if sys.argv else "") in ("hpcfs", "mount.hpcfs", "-m")


# Python's own handler is there unless SIGINT came in ignored (a background job): that stays ignored.
# ``cli.main`` puts Python's handler back once the modules are loaded.
if _is_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, exit_interrupted)
