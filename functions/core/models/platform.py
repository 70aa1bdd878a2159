"""The platform's own tables: workflow runs, the event inbox/outbox, the local broker's queue."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id, utcnow


class WorkflowRun(Base):
    """One execution of a declared workflow; the single source of truth for its progress."""

    __tablename__ = "workflow_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow: Mapped[str] = mapped_column(String(100), index=True)
    resource_id: Mapped[str | None] = mapped_column(String(36), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    step: Mapped[str | None] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Names of the forward steps that completed, in order: compensation walks it backwards.
    completed: Mapped[list[str]] = mapped_column(JSON, default=list)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_workflow_runs_due", "status", "next_run_at"),)


class WorkflowStepLog(Base):
    """What happened at each attempt of each step (for operators and for tests)."""

    __tablename__ = "workflow_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    step: Mapped[str] = mapped_column(String(100))
    phase: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ProcessedEvent(Base):
    """Inbox: (consumer, source, id) of every event a consumer applied, with the reply it gave.

    Written in the same transaction as the consumer's state change, so a redelivered event is
    recognised and answered with the same reply instead of being applied twice.
    """

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    reply: Mapped[str | None] = mapped_column(Text)


class OutboxEvent(Base):
    """An event that must leave together with a database change; deleted once published."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class BrokerDelivery(Base):
    """One pending delivery of one event to one subscriber of the local broker."""

    __tablename__ = "broker_queue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    broker: Mapped[str] = mapped_column(String(100))
    trigger: Mapped[str] = mapped_column(String(100))
    subscriber: Mapped[str] = mapped_column(String(100))
    # "deliver" to the subscriber, or "dead_letter" to the trigger's dead-letter sink.
    kind: Mapped[str] = mapped_column(String(20), default="deliver")
    event: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_broker_queue_due", "broker", "next_attempt_at"),)


class DeadLetter(Base):
    """An event that exhausted its deliveries, recorded by the dead-letter sink function."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(255))
    event_source: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(255), index=True)
    subject: Mapped[str | None] = mapped_column(String(255))
    error_dest: Mapped[str | None] = mapped_column(String(1024))
    error_code: Mapped[str | None] = mapped_column(String(20))
    error_data: Mapped[str | None] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class NotificationRecord(Base):
    """A usage or lifecycle notification as the notification consumer received it (once per
    CloudEvent id): the ledger administrators page through (GET /mgmt/notifications)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The CloudEvent id (deterministic per fact, e.g. "trove.instance.create:<instance id>").
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    # Trove's event type, e.g. trove.instance.create or dbaas.backup_create.end.
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    # The instance or backup the notification is about.
    resource_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # Trove's payload, key for key.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When the reported change happened (the CloudEvent's time).
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SourceSequence(Base):
    """Highest `sequence` accepted per event source (replay and out-of-order protection)."""

    __tablename__ = "event_sources"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
