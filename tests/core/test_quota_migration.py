"""Migration 0006 counts what existing instances and backups use, so quotas start right on
a database that had data before quotas were enforced."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from functions.core import db as dbmod
from functions.core import migrate
from tests.conftest import _reset_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    url = request.getfixturevalue("pg_database_url")
    _reset_postgres(url)
    return url


def test_upgrade_counts_existing_instances_and_backups(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0005")
    engine = dbmod.make_engine(empty_url)
    now = dt.datetime(2026, 1, 1)
    rows = {
        "datastores": [{"id": "ds", "name": "postgresql"}],
        "datastore_versions": [{"id": "dv", "datastore_id": "ds", "name": "15", "version": "15", "manager": "postgresql",
                                "active": True}],
        "flavors": [{"id": f, "name": f"m{f}", "ram": ram, "vcpus": 1, "disk": 0, "ephemeral": 0, "is_public": True,
                     "deleted": False} for f, ram in (("1", 512), ("2", 1024))],
        "instances": [{"id": i, "created": now, "updated": now, "name": i, "task_id": 1, "tenant_id": t, "deleted": d,
                       "datastore_version_id": "dv", "version_id": 1, "flavor_id": f, "volume_size": v}
                      for i, t, d, f, v in (("a", "p1", False, "1", 2), ("b", "p1", False, "2", 3),
                                            ("c", "p1", True, "2", 5), ("d", "p2", False, "1", 1))],
        "backups": [{"id": b, "name": b, "tenant_id": t, "state": "COMPLETED", "deleted": d, "created": now,
                     "updated": now, "bytes_done": 0, "last_sequence": 0}
                    for b, t, d in (("b1", "p1", False), ("b2", "p1", True), ("b3", "p2", False), ("b4", "p2", False))],
    }
    with engine.begin() as conn:
        for table, values in rows.items():
            columns = list(values[0])
            conn.execute(text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"),
                         values)
    migrate.upgrade(empty_url, "0006")
    with engine.connect() as conn:
        usage = {(t, r): n for t, r, n in conn.execute(text("SELECT tenant_id, resource, in_use FROM quota_usages"))}
        holds = conn.execute(text("SELECT owner_id, resource, amount FROM quota_holds WHERE owner_id = 'b'")).all()
    assert usage == {
        ("p1", "instances"): 2, ("p1", "ram"): 1536, ("p1", "volumes"): 5, ("p1", "backups"): 1,
        ("p2", "instances"): 1, ("p2", "ram"): 512, ("p2", "volumes"): 1, ("p2", "backups"): 2,
    }
    assert sorted(holds) == [("b", "instances", 1), ("b", "ram", 1024), ("b", "volumes", 3)]
    # Down and up again counts once, not twice.
    _downgrade(empty_url, "0005")
    migrate.upgrade(empty_url, "0006")
    with engine.connect() as conn:
        again = {(t, r): n for t, r, n in conn.execute(text("SELECT tenant_id, resource, in_use FROM quota_usages"))}
    assert again == usage
    engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(migrate.alembic_config(url), revision)
