"""Datastore registry: the engine classes the agent can run, by `--datastore` name."""

from __future__ import annotations

from guest_agent.datastores.base import Datastore, DatastoreError
from guest_agent.datastores.mariadb import MariaDB
from guest_agent.datastores.postgresql import PostgreSQL

REGISTRY: dict[str, type[Datastore]] = {
    "postgresql": PostgreSQL,
    "mariadb": MariaDB,
}

__all__ = ["REGISTRY", "Datastore", "DatastoreError", "MariaDB", "PostgreSQL"]
