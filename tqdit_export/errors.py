"""How a command ends, for `tqdit` and `python -m tqdit_export.edge` alike.

An expected failure (bad input: a flag, a file, a folder; a missing tool) is one message on
stderr that names the input and says what to do, exit 2; Ctrl-C is exit 130 (every artifact
is written to a temporary path and renamed into place, so nothing half-written is left);
a traceback only with --debug. Exit 1 is left to a check that ran and failed (`tqdit check`,
`tqdit lint`). Torch-free: the edge runtime uses it.
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

from calibration.folders import LeftoverWarning

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# What library code raises for a bad input or a missing tool; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, KeyError, RuntimeError)


class UsageError(ValueError):
    """A command-line value or combination the command cannot use (exit 2, like every bad input)."""


class InputWarning(UserWarning):
    """Something about an input that does not stop the command but that the user should know
    (e.g. an export too old to name its record); a command prints it as `prog: warning: ...`."""


def error_message(err: BaseException) -> str:
    """The message of an error; the file system's own (a full disk, a permission) as `path: reason`."""
    if isinstance(err, OSError) and err.errno is not None and err.filename is not None:
        paths = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return f"{paths}: {err.strerror}"
    if isinstance(err, KeyError) and len(err.args) == 1:  # str(KeyError) is the repr of its message
        return str(err.args[0])
    return str(err)


def run_command(prog: str, command: Callable[[], int], debug: bool = False) -> int:
    """Run `command` and return its exit code: 2 with a message for an expected failure, 130 on Ctrl-C.

    `prog` starts every message (`tqdit sample`); `debug` re-raises instead, for the traceback.
    """
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (InputWarning, LeftoverWarning)):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    default_show = warnings.showwarning
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = show
            return command()
    except EXPECTED_ERRORS as err:
        if debug:
            raise
        print(f"{prog}: error: {error_message(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
