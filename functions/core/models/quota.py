"""Per-project quota limits, usage counters and the reservations that move them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint
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
    """A pending change to a usage: Reserved, then Committed or Rolled Back."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    usage_id: Mapped[str] = mapped_column(String(36), ForeignKey("quota_usages.id"), index=True)
    delta: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(36))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
