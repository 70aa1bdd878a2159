"""Trove's status derivation (trove.md §3.4) and the heartbeat expiry, as pure functions."""

from __future__ import annotations

import datetime as dt

import pytest

from functions.core.states import HEARTBEAT_EXPIRY_S, ServiceStatus, Task, operating_status, visible_status

NOW = dt.datetime(2026, 11, 22, 12, 0, 0)


@pytest.mark.parametrize(
    "task, server, backup, expected",
    [
        (Task.BUILDING_ERROR_SERVER, "BUILD", False, "ERROR"),
        (Task.BUILDING, "BUILD", False, "BUILD"),
        (Task.BUILDING, "ERROR", False, "ERROR"),
        (Task.REBOOTING, "ACTIVE", False, "REBOOT"),
        (Task.RESIZING, "ACTIVE", False, "RESIZE"),
        (Task.RESTART_REQUIRED, "ACTIVE", False, "RESTART_REQUIRED"),
        (Task.DELETING, "ACTIVE", False, "SHUTDOWN"),
        (Task.DELETING, "BUILD", False, "ERROR"),
        (Task.NONE, "ACTIVE", True, "BACKUP"),
        (Task.NONE, "ACTIVE", False, "ACTIVE"),
        (Task.NONE, "SHUTDOWN", False, "SHUTDOWN"),
        (Task.NONE, "VERIFY_RESIZE", False, "RESIZE"),
        (Task.NONE, "PAUSED", False, "UNKNOWN"),
        (Task.MIGRATING, "ACTIVE", False, "ACTIVE"),
    ],
)
def test_visible_status(task: Task, server: str, backup: bool, expected: str) -> None:
    assert visible_status(task, server, backup) == expected


def test_operating_status_only_when_idle_and_active() -> None:
    fresh = NOW - dt.timedelta(seconds=3)
    assert operating_status(Task.NONE, "ACTIVE", ServiceStatus.HEALTHY, fresh, NOW) == "HEALTHY"
    assert operating_status(Task.NONE, "ACTIVE", ServiceStatus.CRASHED, fresh, NOW) == "SHUTDOWN"
    assert operating_status(Task.BUILDING, "BUILD", ServiceStatus.HEALTHY, fresh, NOW) == ""
    assert operating_status(Task.REBOOTING, "ACTIVE", ServiceStatus.RESTARTING, fresh, NOW) == ""


def test_a_silent_guest_reads_as_error_after_the_expiry() -> None:
    stale = NOW - dt.timedelta(seconds=HEARTBEAT_EXPIRY_S)
    assert operating_status(Task.NONE, "ACTIVE", ServiceStatus.HEALTHY, stale, NOW) == "ERROR"
    assert operating_status(Task.NONE, "ACTIVE", ServiceStatus.HEALTHY, None, NOW) == "ERROR"
    # RESTART_REQUIRED is kept, as Trove does.
    assert operating_status(Task.NONE, "ACTIVE", ServiceStatus.RESTART_REQUIRED, stale, NOW) == "RESTART_REQUIRED"
