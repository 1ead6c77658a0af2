"""Alembic environment: runs on the connection handed over by ``deepscout.memory.db.migrate``.

Without one (the ``alembic`` command line with ``-x url=...``), it opens its own engine.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from deepscout.memory.tables import Base, include_in_autogenerate


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_in_autogenerate,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from deepscout.memory.db import create_db_engine

    x_arguments = context.get_x_argument(as_dictionary=True)
    url = x_arguments.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("Pass the database URL: alembic -x url=sqlite:///PATH/deepscout.db upgrade head")
    engine = create_db_engine(url)
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("Offline (SQL script) migrations are not supported; run them against a database.")
run_migrations()
