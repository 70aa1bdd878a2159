"""Request bodies of the backup, backup strategy and backup schedule APIs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_MAX = 255


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RestoreFromIn(_Body):
    remote_location: str
    local_datastore_version_id: str
    size: float


class BackupCreate(_Body):
    """Trove's backup.create schema (python-troveclient sends name, incremental, instance,
    description; the swift_container and parent_id options come from the CLI flags)."""

    name: str = Field(min_length=1, max_length=NAME_MAX)
    description: str | None = Field(default=None, max_length=512)
    instance: str | None = None
    parent_id: str | None = None
    incremental: int | bool = 0
    swift_container: str | None = Field(default=None, min_length=1, max_length=255)
    storage_driver: str | None = None
    restore_from: RestoreFromIn | None = None

    @field_validator("incremental")
    @classmethod
    def _zero_or_one(cls, value: int | bool) -> int:
        if int(value) not in (0, 1):
            raise ValueError("incremental must be 0 or 1")
        return int(value)


class BackupStrategyCreate(_Body):
    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_id: str | None = None
    swift_container: str = Field(min_length=1, max_length=255)


class BackupScheduleCreate(_Body):
    """Ours (Trove has no schedules): `{"backup_schedule": {...}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=NAME_MAX)
    instance_id: str
    cron: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=512)
    keep_last: int | None = Field(default=None, ge=1, le=1000)
    max_age_days: float | None = Field(default=None, gt=0, le=3650)
    incremental: bool = False
    full_every: int = Field(default=7, ge=1, le=1000)
