"""Observable platform data: the database and everything that reads or writes it as rows.

- :mod:`ranker.data.db`: engine, sessions, migrations, settings and audit.
- :mod:`ranker.data.clock`: the serve clock (a setting; the wall clock without one).
- :mod:`ranker.data.schema`: the SQLAlchemy tables.
- :mod:`ranker.data.catalog`: the item catalogue as arrays, and item counts as of a moment.
- :mod:`ranker.data.interactions`: users, items and interactions as typed columns.
- :mod:`ranker.data.upserts`: create or update one item or one user.
- :mod:`ranker.data.importing`: MovieLens, RecBole and CSV importers.
- ``migrations/``: Alembic revisions.
"""
