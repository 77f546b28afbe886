"""The errors the toolkit expects, and how a recipe reports them (`common.cli.run_recipe`).

An *expected* error is one the toolkit raises on purpose to refuse something, with a message that says what to do:
the recipe prints ``error: <message>`` alone on stderr and exits with the error's `exit_code` (2 for usage, config
and data errors, 1 for the rest, such as a full disk). Anything else is a bug or an unforeseen failure and keeps its
traceback. ``VLRM_DEBUG=1`` prints the traceback of expected errors too.

Each class also derives from the built-in exception that code catching it may already expect (`ValueError`,
`FileNotFoundError`, `RuntimeError`).
"""

from __future__ import annotations

import errno

# An `OSError` with one of these numbers is the machine refusing (full disk, over quota, read-only or forbidden
# folder), not a bug: reported like an expected error, exit status 1.
EXPECTED_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


class ExpectedError(Exception):
    """A refusal the toolkit explains in its message; exit status 1."""

    exit_code = 1


class UsageError(ExpectedError):
    """The command, its config or its inputs are wrong; exit status 2."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """An invalid config or command line (every problem listed)."""


class InputError(UsageError, ValueError):
    """A data file, model folder or other input the command names cannot be used as it is."""


class InputNotFound(UsageError, FileNotFoundError):
    """A data file, model folder or other input the command names does not exist (or lacks a file it needs)."""


def exit_code_of(error: BaseException) -> int | None:
    """The exit status an expected error gets, or None for an unexpected one (which keeps its traceback)."""
    if isinstance(error, ExpectedError):
        return error.exit_code
    if isinstance(error, OSError) and error.errno in EXPECTED_OS_ERRORS:
        return 1
    return None
