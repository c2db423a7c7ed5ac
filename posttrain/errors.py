"""Errors a user can fix, and how a stage reports them: one line, no traceback.

Library code raises a UserError subclass whose message names the key, file (and line)
or checkpoint and what to do; runtime.setup installs `report_user_errors` as the
process's exception hook, so a stage prints that line and exits 1 wherever it was
raised. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input or a missing/corrupt upstream output, already phrased for the user."""


def report_user_errors(kind, value, traceback) -> None:
    if isinstance(value, UserError):
        print(value, file=sys.stderr)
        return
    sys.__excepthook__(kind, value, traceback)


def install() -> None:
    sys.excepthook = report_user_errors
