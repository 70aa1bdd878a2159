"""Request bodies of the instance API, as python-troveclient sends them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_MAX = 255


class _Body(BaseModel):
    # Trove's schemas allow extra keys it does not know; so do we.
    model_config = ConfigDict(extra="ignore", frozen=True)


class VolumeIn(_Body):
    size: int = Field(ge=1)
    type: str | None = None

    @field_validator("size", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        # Trove accepts "2" as well as 2.
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value


class DatastoreIn(_Body):
    type: str | None = None
    version: str | None = None
    version_number: str | None = None


class DatabaseIn(_Body):
    name: str = Field(min_length=1, max_length=64)
    character_set: str | None = None
    collate: str | None = None


class DatabaseRef(_Body):
    name: str = Field(min_length=1, max_length=64)


class UserIn(_Body):
    name: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1)
    host: str | None = None
    databases: list[DatabaseRef] = Field(default_factory=list)


class AccessIn(_Body):
    is_public: bool = False
    allowed_cidrs: list[str] = Field(default_factory=list)


class RestorePointIn(_Body):
    backupRef: str


class InstanceCreate(_Body):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    flavorRef: str
    volume: VolumeIn | None = None
    datastore: DatastoreIn | None = None
    databases: list[DatabaseIn] = Field(default_factory=list)
    users: list[UserIn] = Field(default_factory=list)
    nics: list[dict[str, Any]] = Field(default_factory=list)
    access: AccessIn | None = None
    restorePoint: RestorePointIn | None = None
    replica_of: str | None = None
    replica_count: int | None = Field(default=None, ge=1, le=3)
    configuration: str | None = None
    availability_zone: str | None = None
    region_name: str | None = None
    locality: str | None = None
    modules: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("flavorRef", mode="before")
    @classmethod
    def _flavor(cls, value: Any) -> Any:
        # troveclient sends an int id; Trove also takes a full href (last path segment).
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and "/" in value:
            return value.rstrip("/").rsplit("/", 1)[-1]
        return value


class InstanceUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    configuration: str | None = None
    replica_of: str | None = None
    slave_of: str | None = None
    datastore_version: str | None = None
    access: AccessIn | None = None
