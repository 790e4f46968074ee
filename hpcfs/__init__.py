"""hpcfs: remote HPC storage as local file trees."""
# Only built-in modules before the Ctrl-C handler is set: even ``os`` (or ``signal``, with its enum) takes
# longer to import than a quick Ctrl-C on a loaded machine.
import _signal
import sys

__version__ = "0.1.0"


def exit_interrupted(signum, frame):
    """Ctrl-C while the command is still loading: nothing to clean up yet, so one line and exit 130
    (Python would print a KeyboardInterrupt traceback from whichever import it was in)."""
    import posix  # built in: what ``os`` would call

    posix.write(2, b"hpcfs: interrupted\n")
    posix._exit(130)


def _is_command() -> bool:
    """``hpcfs``, ``mount.hpcfs`` or ``python -m hpcfs`` (argv[0] is "-m" while the module is found); a
    program importing hpcfs keeps its own Ctrl-C."""
    return (sys.argv[0] if sys.argv else "").rsplit("/", 1)[-1] in ("hpcfs", "mount.hpcfs", "-m")


# Python's own handler is there unless SIGINT came in ignored (a background job): that stays ignored.
# ``cli.main`` puts Python's handler back once the modules are loaded.
if _is_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, exit_interrupted)
