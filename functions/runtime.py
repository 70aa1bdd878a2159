"""Composition root: settings, engine, publisher and authenticator, built lazily once per process.

Function modules call `runtime()` inside handlers, never at import time, so importing a
function is cheap (cold start) and tests can swap the environment with `reset_runtime()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from functions.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from events.envelope import Message
    from events.publisher import Publisher
    from functions.core.auth import Authenticator
    from functions.drivers.backup_storage import ObjectBackupStorage
    from functions.drivers.compute_local import LocalCompute
    from functions.drivers.compute_openstack import OpenStackCompute
    from functions.drivers.guest_client import GuestClient

log = logging.getLogger("troveless.runtime")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        from functions.core.db import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from functions.core.db import make_sessionmaker

        return make_sessionmaker(self.engine)

    @cached_property
    def publisher(self) -> Publisher | None:
        if not self.settings.broker_url:
            return None
        from events.publisher import HttpPublisher

        return HttpPublisher(self.settings.broker_url)

    @cached_property
    def authenticator(self) -> Authenticator:
        if self.settings.keystone is not None:  # TROVELESS_AUTH=keystone
            from functions.drivers.keystone_auth import KeystoneAuthenticator

            return KeystoneAuthenticator(self.settings.keystone)
        from functions.core.auth import TokenFile

        return TokenFile(self.settings.token_file)

    @cached_property
    def compute(self) -> LocalCompute | OpenStackCompute:
        if self.settings.openstack is not None:  # TROVELESS_COMPUTE=openstack
            from functions.drivers.compute_openstack import OpenStackCompute

            return OpenStackCompute(self.settings.openstack, heartbeat_interval_s=self.settings.heartbeat_interval_s)
        from functions.drivers.compute_local import LocalCompute

        return LocalCompute(
            self.settings.data_dir / "instances", heartbeat_interval_s=self.settings.heartbeat_interval_s
        )

    @cached_property
    def storage(self) -> ObjectBackupStorage:
        from functions.drivers.backup_storage import ObjectBackupStorage

        return ObjectBackupStorage(self.settings.backups)

    @cached_property
    def guest(self) -> GuestClient:
        from functions.drivers.guest_client import GuestClient

        return GuestClient()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        from functions.core.db import transaction

        with transaction(self.sessions) as session:
            yield session

    def relay(self, outbox_ids: Sequence[int]) -> None:
        """Publish outbox rows right after their transaction committed (best effort:
        whatever fails here stays in the outbox for the relay schedule to resend)."""
        if not outbox_ids or self.publisher is None:
            return
        from functions.core import outbox

        outbox.relay(self.sessions, self.publisher, ids=outbox_ids)

    def publish_now(self, messages: Sequence[Message]) -> None:
        """Write messages to the outbox and relay them: nothing is lost if the broker is down."""
        from functions.core import outbox

        with self.transaction() as session:
            ids = outbox.enqueue(session, messages)
        self.relay(ids)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                settings = Settings.from_env()
                from functions.core import logs

                # A function running alone (functions-framework, Knative) logs in the chosen
                # format; a host that configured logging itself (`troveless up`) is left alone.
                logs.configure(settings.log_format, force=False)
                _runtime = Runtime(settings)
    return _runtime


def reset_runtime() -> None:
    """Forget the process runtime (tests, or after the environment changed)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None


class Work:
    """A unit of work: one transaction plus the events to publish once it has committed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.outbox_ids: list[int] = []

    def emit(self, messages: Sequence[Message]) -> None:
        from functions.core import outbox

        self.outbox_ids += outbox.enqueue(self.session, messages)


@contextmanager
def unit_of_work() -> Iterator[Work]:
    rt = runtime()
    with rt.transaction() as session:
        work = Work(session)
        yield work
    from functions.core import outbox

    # Also what code below the handler wrote straight to the outbox (notifications, ...).
    rt.relay(sorted(set(work.outbox_ids) | set(outbox.enqueued(session))))
