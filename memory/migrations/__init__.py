"""Alembic migrations of the deepscout database (run through ``deepscout.memory.db.migrate``)."""
