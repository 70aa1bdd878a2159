"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from functions.core import migrate
from functions.core.models import Base, load_all


def test_migrated_schema_matches_the_models(engine, database_url) -> None:  # type: ignore[no-untyped-def]
    load_all()
    migrate.upgrade(database_url)  # a second upgrade is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"
