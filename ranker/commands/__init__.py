"""Subcommands of the ``ranker`` CLI, one module per area.

Each module listed in :data:`MODULES` defines ``add_commands(sub)``, which adds its
parsers to the top-level subparsers and sets ``handler`` on each.
"""

MODULES = (
    "ranker.commands.base",
    "ranker.commands.core",
    "ranker.commands.data_import",
    "ranker.commands.experiments",
    "ranker.commands.serve",
)
