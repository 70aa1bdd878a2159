"""Database instances, their faults, and the datastore status the guest reports.

Columns follow Trove's `instances`, `instance_faults` and `service_statuses` tables, plus
what a serverless control plane needs instead of Nova/RPC state.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id, utcnow


class Instance(Base):
    """One database instance; soft-deleted (`deleted`) so ids stay resolvable."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    name: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(255))
    compute_instance_id: Mapped[str | None] = mapped_column(String(36))
    # Trove's InstanceTask code; 0x01 is NONE.
    task_id: Mapped[int] = mapped_column(Integer, default=1)
    task_description: Mapped[str | None] = mapped_column(String(255))
    task_start_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    volume_id: Mapped[str | None] = mapped_column(String(36))
    # Not an FK: the instance keeps its flavor id even if the flavor is retired.
    flavor_id: Mapped[str | None] = mapped_column(String(36))
    volume_size: Mapped[int | None] = mapped_column(Integer)  # GB
    volume_type: Mapped[str | None] = mapped_column(String(255))
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    server_status: Mapped[str | None] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    datastore_version_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("datastore_versions.id"), index=True
    )
    configuration_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("configurations.id"), index=True
    )
    # Replication source: a replica points at its primary.
    slave_of_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("instances.id"), index=True
    )
    cluster_id: Mapped[str | None] = mapped_column(String(36))
    shard_id: Mapped[str | None] = mapped_column(String(36))
    type: Mapped[str | None] = mapped_column(String(64))
    region_id: Mapped[str | None] = mapped_column(String(255))
    encrypted_key: Mapped[str | None] = mapped_column(String(255))
    # {"is_public": bool, "allowed_cidrs": [...]}; None stays SQL NULL, not JSON null.
    access: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    ssl_mode: Mapped[str | None] = mapped_column(String(32))
    ssl_ref: Mapped[str | None] = mapped_column(String(255))
    # Ours: the API's "addresses" list, since there is no Neutron to ask.
    addresses: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    # Ours: where the control plane reaches this instance's guest agent.
    guest_endpoint: Mapped[str | None] = mapped_column(String(255))
    # Ours: optimistic lock, so concurrent functions cannot overwrite each other's task state.
    version_id: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": version_id}


class InstanceFault(Base):
    """The last error of an instance, shown to admins as `fault`."""

    __tablename__ = "instance_faults"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    instance_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("instances.id"), index=True
    )
    message: Mapped[str] = mapped_column(String(255))
    details: Mapped[str | None] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class ServiceStatus(Base):
    """The datastore status last reported by the guest: one row per instance."""

    __tablename__ = "service_statuses"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    instance_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("instances.id"), unique=True
    )
    # Trove's ServiceStatus code (e.g. 0x21 HEALTHY) and its wire description.
    status_id: Mapped[int] = mapped_column(Integer)
    status_description: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # Ours: highest guest event sequence applied; older events are dropped (Trove's
    # conductor_lastseen, folded into this row).
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    # Ours: last heartbeat, kept apart from updated_at so admin writes do not fake liveness.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Ours: what the last heartbeat said, shown in instance views.
    guest_detail: Mapped[str | None] = mapped_column(Text)
    datastore_version: Mapped[str | None] = mapped_column(String(64))
    volume_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Ours: the datastore's own figures from the last heartbeat (exported as metrics).
    connections: Mapped[int | None] = mapped_column(Integer)
    database_size_bytes: Mapped[int | None] = mapped_column(BigInteger)


class RootEnabledHistory(Base):
    """Who enabled root on an instance, and when (Trove's root_enabled_history).

    Trove answers `rootEnabled` from this table, not from the guest: enabled once a row
    exists. Ours also records when root was disabled again."""

    __tablename__ = "root_enabled_history"

    id: Mapped[str] = mapped_column(String(36), ForeignKey("instances.id"), primary_key=True)
    user: Mapped[str] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
