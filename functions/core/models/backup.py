"""Backups and per-project/per-instance backup storage defaults (Trove's backup_strategy)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, String, UniqueConstraint
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
