"""Prometheus metrics of the control plane (prometheus-client), served at GET /metrics.

Two kinds:

- in-process instruments, updated as requests and events are handled: API requests by
  route template and status, API latency, event-function latency, CloudEvents by type and
  outcome, notifications received. In the local platform every function runs in one
  process, so this registry sees everything. On Knative every Service is its own process
  with its own registry: each exposes it (functions-framework serves the target on every
  path, so through a metrics port or sidecar) and Prometheus scrapes them all and sums
  across pods; the shared-database gauges below are the same from any of them.
- gauges read from the shared database at scrape time (so they are right whichever process
  answers): workflow runs by workflow and state, dead letters, outbox backlog, and each
  live instance's datastore figures as its guest last reported them in a heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("troveless.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No `_created` series beside every counter and histogram: Prometheus does not need them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

API_REQUESTS = Counter(
    "troveless_api_requests",
    "API requests by method, route template and HTTP status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "troveless_api_request_duration_seconds",
    "API request latency by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
)
FUNCTION_LATENCY = Histogram(
    "troveless_event_function_duration_seconds",
    "Time an event function (step, conductor, schedule, sink) took per CloudEvent.",
    ["function"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "troveless_events",
    "CloudEvents handled by event functions, by type and outcome: applied, duplicate "
    "(inbox), stale (out of order or no longer expected), rejected (permanent: dead-lettered), "
    "failed (transient: retried).",
    ["type", "outcome"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "troveless_notifications_received",
    "Usage and lifecycle notifications recorded by the notification consumer, by Trove event type.",
    ["event_type"],
    registry=REGISTRY,
)

OUTCOMES = ("applied", "duplicate", "stale", "rejected", "failed")


# ---- API -------------------------------------------------------------------------------------


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(method, route, str(status)).inc()
    API_LATENCY.labels(method, route).observe(seconds)


# ---- events ----------------------------------------------------------------------------------

_outcome: ContextVar[list[str] | None] = ContextVar("troveless_event_outcome", default=None)


def mark_event(outcome: str) -> None:
    """Say what became of the event being handled (the conductor, the workflow runner and
    the consumers call this when they drop a duplicate or a stale event). The first mark
    other than `applied` wins; outside an event function this does nothing."""
    holder = _outcome.get()
    if holder is not None and holder[0] == "applied":
        holder[0] = outcome


@contextmanager
def observe_event(function: str, event_type: str) -> Iterator[list[str]]:
    """Time one event function call and count its event by outcome. The caller sets
    `holder[0]` to `rejected` or `failed` when the handler raised."""
    holder = ["applied"]
    token = _outcome.set(holder)
    started = time.perf_counter()
    try:
        yield holder
    finally:
        _outcome.reset(token)
        FUNCTION_LATENCY.labels(function).observe(time.perf_counter() - started)
        EVENTS.labels(event_type, holder[0]).inc()


# ---- shared-database gauges ------------------------------------------------------------------


class SharedDatabaseCollector(Collector):
    """Gauges computed from the shared database when scraped."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("troveless_database_up", "1 if the shared database answered this scrape.")
        try:
            families = self._families()
        except Exception:  # a scrape must answer even when the database does not
            log.exception("metrics: cannot read the shared database")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> list[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from functions.core.models.instance import Instance, ServiceStatus
        from functions.core.models.platform import DeadLetter, OutboxEvent, WorkflowRun

        runs = GaugeMetricFamily(
            "troveless_workflow_runs", "Workflow runs in the shared database by workflow and state.",
            labels=["workflow", "state"],
        )
        dead = GaugeMetricFamily(
            "troveless_dead_letters", "Events the broker gave up on (dead_letters table), by event type.",
            labels=["type"],
        )
        outbox = GaugeMetricFamily("troveless_outbox_pending", "Events written to the outbox and not yet published.")
        labels = ["instance_id", "project_id"]
        connections = GaugeMetricFamily(
            "troveless_instance_connections", "Client connections to the datastore, as last reported by the guest.",
            labels=labels,
        )
        db_size = GaugeMetricFamily(
            "troveless_instance_database_size_bytes", "Total size of the instance's databases, as last reported.",
            labels=labels,
        )
        disk = GaugeMetricFamily(
            "troveless_instance_disk_used_bytes", "Bytes used on the instance's data volume, as last reported.",
            labels=labels,
        )
        seen = GaugeMetricFamily(
            "troveless_instance_last_heartbeat_timestamp_seconds",
            "When the guest's last applied heartbeat was sent (Unix time): tells stale figures apart.",
            labels=labels,
        )
        with self.sessions() as session:
            for workflow, state, count in session.execute(
                select(WorkflowRun.workflow, WorkflowRun.status, func.count()).group_by(
                    WorkflowRun.workflow, WorkflowRun.status
                )
            ):
                runs.add_metric([workflow, state], count)
            for event_type, count in session.execute(
                select(DeadLetter.event_type, func.count()).group_by(DeadLetter.event_type)
            ):
                dead.add_metric([event_type], count)
            outbox.add_metric([], session.execute(select(func.count()).select_from(OutboxEvent)).scalar_one())
            rows = session.execute(
                select(
                    Instance.id,
                    Instance.tenant_id,
                    ServiceStatus.connections,
                    ServiceStatus.database_size_bytes,
                    ServiceStatus.volume_used_bytes,
                    ServiceStatus.heartbeat_at,
                )
                .join(ServiceStatus, ServiceStatus.instance_id == Instance.id)
                .where(Instance.deleted.is_(False))
                .order_by(Instance.id)
            )
            for instance_id, project_id, conns, size, used, heartbeat_at in rows:
                key = [instance_id, project_id]
                if conns is not None:
                    connections.add_metric(key, conns)
                if size is not None:
                    db_size.add_metric(key, size)
                if used is not None:
                    disk.add_metric(key, used)
                if heartbeat_at is not None:
                    seen.add_metric(key, _unix(heartbeat_at))
        return [runs, dead, outbox, connections, db_size, disk, seen]


def _unix(moment) -> float:  # type: ignore[no-untyped-def]
    import datetime as dt

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def exposition(sessions: sessionmaker[Session] | None) -> bytes:
    """The text exposition: this process's instruments, then the shared-database gauges."""
    text = generate_latest(REGISTRY)
    if sessions is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(SharedDatabaseCollector(sessions))
        text += generate_latest(scrape)
    return text
