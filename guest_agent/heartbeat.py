"""Signed status events: periodic heartbeats to the broker and the StatusRequested reply.

A dedicated thread does all network I/O, so a slow or dead broker never blocks the command
server or the supervisor. Status changes are queued with the snapshot taken *at the change*
(a CRASHED that lasts 1 s is still reported even if the server is HEALTHY again by the time
the broker answers). Every event carries a fresh `sequence` from one SequenceCounter shared by
heartbeats and status replies, so consumers see strictly increasing numbers per source.

Other guest events (backup progress and results) go through the same queue and thread, so
they are signed and sequenced like heartbeats and keep their order relative to the status
changes around them (a GuestBackupFinished always precedes the first heartbeat without that
backup's id). They are retried a few times, since the control plane waits for them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from events.base import Event
from events.envelope import Message
from events.guest import GuestHeartbeat, GuestStatus, GuestStatusReported, guest_source, instance_key
from events.publisher import Publisher
from events.replay import SequenceCounter, format_sequence
from events.signing import sign
from guest_agent.process import tree_size
from guest_agent.settings import Settings
from guest_agent.supervisor import Snapshot

log = logging.getLogger(__name__)

GIB = 1024**3
EVENT_ATTEMPTS = 3
EVENT_RETRY_S = 1.0
# The datastore's own figures (connections, database size) are sampled this often at most.
STATS_INTERVAL_S = 30.0


class DatastoreStats:
    """The datastore's figures for heartbeats, sampled off the heartbeat thread.

    `current()` never blocks: it returns the last sample and, when that is older than the
    interval, starts one refresh in a daemon thread (the queries are bounded anyway, but a
    slow server must not delay a heartbeat). Figures are forgotten while the server is not
    healthy, so a crashed server does not keep reporting its last connection count."""

    def __init__(self, sample: Callable[[], tuple[int, int] | None], interval_s: float = STATS_INTERVAL_S) -> None:
        self.sample = sample
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._values: tuple[int, int] | None = None
        self._sampled_at = float("-inf")
        self._busy = False

    def current(self, healthy: bool = True) -> tuple[int | None, int | None]:
        with self._lock:
            if not healthy:
                self._values, self._sampled_at = None, float("-inf")
            elif not self._busy and time.monotonic() - self._sampled_at >= self.interval_s:
                self._busy = True
                threading.Thread(target=self._refresh, name="datastore-stats", daemon=True).start()
            values = self._values
        return values if values is not None else (None, None)

    def _refresh(self) -> None:
        try:
            values = self.sample()
        except Exception:  # never let a sampling bug take the heartbeat down
            log.exception("cannot sample the datastore's figures")
            values = None
        with self._lock:
            self._values, self._sampled_at, self._busy = values, time.monotonic(), False


class EventFactory:
    """Builds signed GuestHeartbeat / GuestStatusReported messages from a snapshot."""

    def __init__(
        self,
        settings: Settings,
        secret: bytes,
        volume_size_gb: Callable[[], int] | None = None,
        stats: DatastoreStats | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.key = instance_key(settings.instance_id, secret)
        self.source = guest_source(settings.instance_id)
        self.counter = SequenceCounter()
        # The prepare request may carry a newer size than the command line.
        self.volume_size_gb = volume_size_gb or (lambda: settings.volume_size_gb)

    def _fields(self, snap: Snapshot) -> dict[str, object]:
        connections, database_size = (
            self.stats.current(snap.status == GuestStatus.HEALTHY) if self.stats is not None else (None, None)
        )
        return {
            "instance_id": self.settings.instance_id,
            "status": snap.status,
            "description": snap.description,
            "datastore": self.settings.datastore,
            "datastore_version": snap.datastore_version,
            "volume_used_bytes": tree_size(self.settings.volume_dir),
            "volume_size_bytes": self.volume_size_gb() * GIB,
            "server_pid": snap.server_pid,
            "restarts": snap.restarts,
            "backup_id": snap.backup_id,
            "running_version": snap.running_version,
            "connections": connections,
            "database_size_bytes": database_size,
        }

    def _sign(self, event: Event) -> Message:
        msg = event.to_message(
            self.source,
            subject=self.settings.instance_id,
            extensions={
                "partitionkey": self.settings.instance_id,
                "sequence": format_sequence(self.counter.next()),
            },
        )
        return sign(msg, self.key)

    def heartbeat(self, snap: Snapshot) -> Message:
        return self._sign(GuestHeartbeat(**self._fields(snap)))  # type: ignore[arg-type]

    def status_report(self, snap: Snapshot) -> Message:
        return self._sign(GuestStatusReported(**self._fields(snap)))  # type: ignore[arg-type]

    def reply(self, event: Event) -> Message:
        """Any synchronous reply (DatabasesListed, CommandCompleted...), signed and sequenced."""
        return self._sign(event)


class Heartbeater:
    """Sends a heartbeat every `interval` seconds and at once for every queued status change."""

    def __init__(
        self,
        factory: EventFactory,
        publisher: Publisher | None,
        current: Callable[[], Snapshot],
        interval: float,
    ) -> None:
        self.factory = factory
        self.publisher = publisher
        self.current = current
        self.interval = interval
        self._changes: queue.Queue[Snapshot | Event | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._failures = 0

    def start(self) -> None:
        self._thread.start()

    def status_changed(self, snap: Snapshot) -> None:
        """Called by the supervisor (any thread); never blocks."""
        self._changes.put(snap)

    def emit(self, event: Event) -> None:
        """Queue any other guest event (backup progress/result); never blocks."""
        self._changes.put(event)

    def stop(self, final: Snapshot | None = None, timeout: float = 5.0) -> None:
        """Send what is queued (plus `final`), then end the thread."""
        if final is not None:
            self._changes.put(final)
        self._stop.set()
        self._changes.put(None)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        next_beat = time.monotonic()
        while True:
            timeout = max(0.0, next_beat - time.monotonic())
            try:
                item = self._changes.get(timeout=timeout)
            except queue.Empty:
                if self._stop.is_set():
                    return
                current = self.current()
                if not self._changes.empty():
                    # Something was queued meanwhile; `current` may already be newer than it
                    # (a backup that ended after its result was queued): send that first.
                    continue
                self._send(current)
                next_beat = time.monotonic() + self.interval
                continue
            if item is None:  # stop marker: flush what is left and end
                if self._stop.is_set() and self._changes.empty():
                    return
                continue
            if isinstance(item, Snapshot):
                self._send(item)
                next_beat = time.monotonic() + self.interval
            else:
                self._send_event(item)

    def _send_event(self, event: Event) -> None:
        """Signed once and re-sent as is: a copy that did arrive makes the retry a replay the
        receiver drops, never a second event."""
        if self.publisher is None:
            return
        try:
            message = self.factory.reply(event)
        except Exception:
            log.exception("cannot sign %s", type(event).__name__)
            return
        for attempt in range(1, EVENT_ATTEMPTS + 1):
            try:
                self.publisher.publish(message)
                return
            except Exception as exc:
                log.warning("%s not delivered (attempt %d of %d): %s", type(event).__name__, attempt, EVENT_ATTEMPTS, exc)
            if attempt < EVENT_ATTEMPTS:
                time.sleep(EVENT_RETRY_S * attempt)

    def _send(self, snap: Snapshot) -> None:
        if self.publisher is None:
            return
        try:
            message = self.factory.heartbeat(snap)
            self.publisher.publish(message)
        except Exception as exc:  # broker down, DNS, anything: log and carry on
            self._failures += 1
            # Log the first failure and then every 12th, so a long outage does not flood logs.
            if self._failures == 1 or self._failures % 12 == 0:
                log.warning("heartbeat not delivered (%d failures so far): %s", self._failures, exc)
            return
        if self._failures:
            log.info("heartbeats delivered again after %d failures", self._failures)
            self._failures = 0
