"""Configuration groups, their values, and the per-version catalog of allowed parameters."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id, utcnow


class Configuration(Base):
    """A named set of datastore settings that instances attach to."""

    __tablename__ = "configurations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    datastore_version_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("datastore_versions.id"), index=True
    )
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ConfigurationParameter(Base):
    """One key of a group; values are strings, cast back by the catalog's data_type."""

    __tablename__ = "configuration_parameters"

    configuration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("configurations.id"), primary_key=True
    )
    configuration_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    configuration_value: Mapped[str | None] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class DatastoreConfigurationParameter(Base):
    """A validation rule: which keys a datastore version accepts, their type and bounds."""

    __tablename__ = "datastore_configuration_parameters"
    __table_args__ = (UniqueConstraint("datastore_version_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    datastore_version_id: Mapped[str] = mapped_column(
        String(36),
        # Explicit: the convention's name would exceed PostgreSQL's 63-character limit.
        ForeignKey("datastore_versions.id", name="fk_datastore_configuration_parameters_dsv"),
    )
    restart_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # Strings as in Trove: bounds may be integers or floats depending on data_type.
    max_size: Mapped[str | None] = mapped_column(String(40))
    min_size: Mapped[str | None] = mapped_column(String(40))
    data_type: Mapped[str] = mapped_column(String(128))  # integer | string | boolean | float
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
