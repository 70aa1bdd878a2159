"""Datastore registry: the engine classes the agent can run, by `--datastore` name.

Each engine module is imported on first use: an agent runs one engine, and each database
driver (psycopg, PyMySQL) costs ~10 MB of resident memory that the other engine's agent
would carry for nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from guest_agent.datastores.base import Datastore, DatastoreError

_MODULES = {
    "postgresql": ("guest_agent.datastores.postgresql", "PostgreSQL"),
    "mariadb": ("guest_agent.datastores.mariadb", "MariaDB"),
}


class _LazyRegistry(Mapping[str, type[Datastore]]):
    def __getitem__(self, name: str) -> type[Datastore]:
        module, cls = _MODULES[name]
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


REGISTRY: Mapping[str, type[Datastore]] = _LazyRegistry()

__all__ = ["REGISTRY", "Datastore", "DatastoreError"]
