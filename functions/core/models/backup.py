"""Backups and per-project/per-instance backup storage defaults (Trove's backup_strategy)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id, utcnow


class Backup(Base):
    """One backup; incrementals chain through parent_id. Soft-deleted like Trove."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(512))
    # Full object URL, e.g. <swift_url>/<container>/<id>.xbstream.gz.
    location: Mapped[str | None] = mapped_column(String(1024))
    backup_type: Mapped[str | None] = mapped_column(String(32))
    # Used space of the data volume in GB at backup start, not the object size (Trove).
    size: Mapped[float | None] = mapped_column(Float)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    # NEW, BUILDING, SAVING, COMPLETED, FAILED, RESTORED, DELETE_FAILED.
    state: Mapped[str] = mapped_column(String(32), default="NEW")
    # Not an FK: imported backups (restore_from) have no instance here.
    instance_id: Mapped[str | None] = mapped_column(String(36), index=True)
    checksum: Mapped[str | None] = mapped_column(String(64))
    backup_timestamp: Mapped[dt.datetime | None] = mapped_column(DateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("backups.id"), index=True
    )
    datastore_version_id: Mapped[str | None] = mapped_column(String(36))
    # Ours: bytes streamed so far, for progress reporting.
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    # Ours: highest guest event sequence applied; older events are dropped.
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    # Ours: bytes of the stored object (compressed); `size` stays Trove's volume figure.
    object_size: Mapped[int | None] = mapped_column(BigInteger)
    # Ours: MariaDB's to_lsn, where an incremental on top of this backup starts.
    lsn: Mapped[str | None] = mapped_column(String(64))
    # Ours: why the backup failed, shown in the API (Trove only logs it).
    fail_reason: Mapped[str | None] = mapped_column(String(1024))
    # Ours: the schedule that made this backup (retention applies to these only).
    schedule_id: Mapped[str | None] = mapped_column(String(36), index=True)


class BackupStrategy(Base):
    """Default container for a project (instance_id '') or one of its instances."""

    __tablename__ = "backup_strategy"
    __table_args__ = (UniqueConstraint("tenant_id", "instance_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    # '' (not NULL) for the project-wide default, so the unique constraint covers it.
    instance_id: Mapped[str] = mapped_column(String(36), default="")
    backend: Mapped[str] = mapped_column(String(255), default="swift")
    swift_container: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class BackupSchedule(Base):
    """A cron schedule of backups for one instance, with retention (Trove has neither)."""

    __tablename__ = "backup_schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(512))
    # Five fields (minute resolution) or six (a trailing seconds field), as croniter reads them.
    cron: Mapped[str] = mapped_column(String(255))
    # Keep the newest N completed backups of this schedule (None: no count limit).
    keep_last: Mapped[int | None] = mapped_column(Integer)
    # Delete completed backups of this schedule older than this (None: no age limit).
    max_age_days: Mapped[float | None] = mapped_column(Float)
    # Incremental backups on top of the schedule's last full one (MariaDB); a full backup
    # is taken every `full_every` runs so chains stay short.
    incremental: Mapped[bool] = mapped_column(Boolean, default=False)
    full_every: Mapped[int] = mapped_column(Integer, default=7)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The last run's outcome as shown in the API: the backup id, or why none was taken.
    last_result: Mapped[str | None] = mapped_column(String(512))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
