"""Datastore catalog: engines, their versions, and the flavor list.

Flavors live here because there is no Nova locally: the catalog Trove would ask Nova for
is our own table.
"""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from functions.core.models.base import Base, new_id


class Datastore(Base):
    """An engine (mysql, mariadb, postgresql) as Trove names it in the API."""

    __tablename__ = "datastores"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # Plain column, no FK: versions reference datastores, so an FK here would be circular.
    default_version_id: Mapped[str | None] = mapped_column(String(36))


class DatastoreVersion(Base):
    """One installable version of a datastore; instances, backups and configs point here."""

    __tablename__ = "datastore_versions"
    __table_args__ = (UniqueConstraint("datastore_id", "name", "version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # Indexed by the unique constraint, whose first column it is.
    datastore_id: Mapped[str] = mapped_column(String(36), ForeignKey("datastores.id"))
    name: Mapped[str] = mapped_column(String(255))
    # NOT NULL (Trove allows NULL) so the unique constraint above really rejects duplicates;
    # callers store `name` when no version number is given, as Trove does since Wallaby.
    version: Mapped[str] = mapped_column(String(255))
    manager: Mapped[str] = mapped_column(String(255))
    # A Glance image id on OpenStack; locally, the directory of the version's server binaries.
    image_id: Mapped[str | None] = mapped_column(String(255))
    # Comma-separated lists, stored as Trove stores them.
    image_tags: Mapped[str | None] = mapped_column(String(255))
    packages: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    registry_ext: Mapped[str | None] = mapped_column(String(255))
    repl_strategy: Mapped[str | None] = mapped_column(String(255))


class Flavor(Base):
    """A compute size. Ids are strings as in Nova; the API shows an int when numeric."""

    __tablename__ = "flavors"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    ram: Mapped[int] = mapped_column(Integer)  # MB
    vcpus: Mapped[int] = mapped_column(Integer)
    disk: Mapped[int] = mapped_column(Integer)  # GB
    ephemeral: Mapped[int] = mapped_column(Integer, default=0)  # GB
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
