"""Request bodies of the configuration-group API, as python-troveclient sends them
(Trove's `configuration.create` / `update` / `edit` schemas)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from functions.core.schemas.instances import DatastoreIn

NAME_MAX = 255


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ConfigurationCreate(_Body):
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r".*[0-9a-zA-Z]+.*")
    description: str | None = Field(default=None, max_length=NAME_MAX)
    values: dict[str, Any]
    datastore: DatastoreIn | None = None


class ConfigurationUpdate(_Body):
    """PUT: replaces every value; name and description optional."""

    values: dict[str, Any]
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX, pattern=r".*[0-9a-zA-Z]+.*")
    description: str | None = Field(default=None, max_length=NAME_MAX)


class ConfigurationEdit(_Body):
    """PATCH: merges these values into the group's."""

    values: dict[str, Any]
