"""Per-source monotonic sequences: producers number their events, consumers refuse old numbers.

CloudEvents' `sequence` extension is a string compared lexicographically, so it is written
zero-padded. A producer that restarts without saved state stays monotonic because its counter
never falls below the current time in microseconds.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

SEQUENCE_WIDTH = 20


def format_sequence(value: int) -> str:
    if value < 0:
        raise ValueError("sequence must be >= 0")
    return str(value).zfill(SEQUENCE_WIDTH)


def parse_sequence(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"sequence {value!r} is not a non-negative integer")
    return int(value)


class SequenceCounter:
    """Thread-safe producer counter: strictly increasing, also across restarts."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


class ReplayGuard(Protocol):
    def advance(self, source: str, sequence: int) -> bool:
        """Record `sequence` for `source`; False if it is not newer than the last accepted."""
        ...


class InMemoryReplayGuard:
    """For one long-lived consumer process (the guest agent's command server)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def advance(self, source: str, sequence: int) -> bool:
        with self._lock:
            if sequence <= self._last.get(source, -1):
                return False
            self._last[source] = sequence
            return True
