"""The base class of the errors an operator can fix.

Every domain error (an unusable database URL, an unknown model version, training data that
cannot be used, a checkpoint that cannot be served, ...) derives from :class:`RankerError`
as well as from the built-in class it has always had (``ValueError`` or ``RuntimeError``),
so ``except ValueError`` still catches the ones it caught before. The message says what to
do next; the CLI prints it as one line (exit status 2), the API and the dashboard show it.

A ``RankerError`` is never a bug. Anything else reaching the CLI is one, and the CLI keeps
its traceback in a log file (see ``docs/cli.md#errors-and-exit-codes``).
"""

from __future__ import annotations


class RankerError(Exception):
    """An error the operator can fix; its message says how, in one line."""


__all__ = ["RankerError"]
