"""The datastore's figures in heartbeats: sampled off the heartbeat thread, never blocking it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from events.guest import GuestHeartbeat, GuestStatus
from guest_agent.heartbeat import DatastoreStats, EventFactory
from guest_agent.supervisor import Snapshot
from tests.guest_agent.test_units import SECRET, _settings
from tests.infra.platform_helpers import wait_for


def test_a_slow_sample_never_blocks_and_is_taken_once_per_interval() -> None:
    release = threading.Event()
    calls = []

    def sample() -> tuple[int, int]:
        calls.append(time.monotonic())
        release.wait(5)
        return 4, 123_456

    stats = DatastoreStats(sample, interval_s=60)
    started = time.monotonic()
    assert stats.current() == (None, None)  # sampling started in the background
    assert stats.current() == (None, None)  # ...once
    assert time.monotonic() - started < 0.5
    release.set()
    wait_for(lambda: stats.current() == (4, 123_456), timeout_s=5, what="the sample")
    assert len(calls) == 1  # fresh for the interval
    assert stats.current(healthy=False) == (None, None)  # a server that is down reports nothing


def test_a_failing_sample_reports_nothing() -> None:
    def broken() -> tuple[int, int]:
        raise RuntimeError("no server")

    stats = DatastoreStats(broken, interval_s=0)
    stats.current()
    time.sleep(0.2)
    assert stats.current() == (None, None)


def test_heartbeats_carry_the_figures(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "inst" / "volume").mkdir(parents=True)
    factory = EventFactory(settings, SECRET, lambda: 1, stats=DatastoreStats(lambda: (2, 9000), interval_s=60))
    healthy = Snapshot(GuestStatus.HEALTHY, "", 42, 0, "15.20")
    factory.heartbeat(healthy)
    wait_for(lambda: factory.heartbeat(healthy).data["connections"] == 2, timeout_s=5, what="figures")
    data = factory.heartbeat(healthy).data
    assert (data["connections"], data["database_size_bytes"]) == (2, 9000)
    assert GuestHeartbeat.from_data(data).database_size_bytes == 9000
    crashed = factory.heartbeat(Snapshot(GuestStatus.CRASHED, "", None, 1, "15.20")).data
    assert crashed["connections"] is None and crashed["database_size_bytes"] is None
    # Without a sampler (older agents) the fields are simply absent from the figures.
    assert EventFactory(settings, SECRET, lambda: 1).heartbeat(healthy).data["connections"] is None
