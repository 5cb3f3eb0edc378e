"""Alembic environment: runs against the engine handed over by ranker.data.db."""

from alembic import context

import ranker.sim.truth  # noqa: F401  (registers the world_truth table)
from ranker.data.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
