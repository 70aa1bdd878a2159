"""Per-project quota limits, usage counters and what each instance or backup holds of them;
the API rate-limit counters (functions/core/quotas.py, functions/core/rate_limits.py)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id, utcnow


class Quota(Base):
    """A per-project override of a resource's default limit (-1 = unlimited)."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("tenant_id", "resource"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    resource: Mapped[str] = mapped_column(String(255))  # instances | ram | volumes | backups
    hard_limit: Mapped[int] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class QuotaUsage(Base):
    """What a project uses of one resource; the row to lock when checking a quota."""

    __tablename__ = "quota_usages"
    __table_args__ = (UniqueConstraint("tenant_id", "resource"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    resource: Mapped[str] = mapped_column(String(255))
    in_use: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Reservation(Base):
    """A pending change to a usage: Reserved, then Committed or Rolled Back (Trove's table,
    kept for its schema; unused: a quota reservation commits with the row that owns it and is
    recorded as a QuotaHold)."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    usage_id: Mapped[str] = mapped_column(String(36), ForeignKey("quota_usages.id"), index=True)
    delta: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(36))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class QuotaHold(Base):
    """How much of one resource one owner (an instance or a backup) takes from its project's
    usage. Written and deleted in the same transaction as the usage counter it moved, so a
    release happens exactly once: whoever deletes the row gives the amount back."""

    __tablename__ = "quota_holds"
    __table_args__ = (PrimaryKeyConstraint("owner_id", "resource"), Index("ix_quota_holds_tenant", "tenant_id", "resource"))

    owner_id: Mapped[str] = mapped_column(String(36))
    resource: Mapped[str] = mapped_column(String(255))
    owner_type: Mapped[str] = mapped_column(String(36))  # instance | backup
    tenant_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[int] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class RateLimitWindow(Base):
    """Requests a project made under one rate limit in one fixed window (shared by every
    function instance; expired windows are deleted by the sweep schedule)."""

    __tablename__ = "rate_limit_windows"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "limit_key", "window_start"),)

    tenant_id: Mapped[str] = mapped_column(String(255))
    limit_key: Mapped[str] = mapped_column(String(64))  # "GET *", "POST */mgmt", ...
    window_start: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    count: Mapped[int] = mapped_column(Integer)
