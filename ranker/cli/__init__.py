"""The ``ranker`` command line: :func:`main` builds the parser from one module per area
(``base``, ``core``, ``data_import``, ``experiments``, ``serve``). Every command exits
non-zero with a one-line reason on bad input.

Public surface: :func:`main`, :class:`CLIError`, :func:`positive_int`, :func:`positive_float`.
"""

from ranker.cli.main import CLIError, main, positive_float, positive_int

__all__ = ["CLIError", "main", "positive_float", "positive_int"]
