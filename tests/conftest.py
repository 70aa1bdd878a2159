"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from TROVELESS_TEST_PG_URL (default: the machine's server on 127.0.0.1:5432).
Each test session creates its own database and drops it at the end, so runs never collide.
A missing PostgreSQL server fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, make_url

from functions.core import db as dbmod
from functions.core import migrate
from tests.keystone.server import keystone  # noqa: F401 - session fixture: a real Keystone, started on first use

PG_ADMIN_URL = os.environ.get(
    "TROVELESS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    name = f"troveless_t_{uuid.uuid4().hex[:10]}"
    admin = _psycopg_dsn(PG_ADMIN_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A migrated, empty shared database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'troveless.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
        _reset_postgres(url)
    migrate.upgrade(url)
    return url


def _reset_postgres(url: str) -> None:
    with psycopg.connect(_psycopg_dsn(url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = dbmod.make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine):  # type: ignore[no-untyped-def]
    return dbmod.make_sessionmaker(engine)
