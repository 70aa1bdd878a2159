"""SQLAlchemy models of the shared database. Importing this package registers every table."""

from __future__ import annotations

from functions.core.models.base import Base, new_id, utcnow

__all__ = ["Base", "new_id", "utcnow"]


def load_all() -> None:
    """Import every model module so Base.metadata knows all tables (for Alembic and tests)."""
    from functions.core.models import (  # noqa: F401
        backup,
        configuration,
        datastore,
        instance,
        platform,
        quota,
    )
