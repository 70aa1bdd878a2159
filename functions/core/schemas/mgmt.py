"""Request bodies of the administrators' catalog API: datastore versions and flavors.

Datastore versions follow Trove's mgmt_datastore_version schemas (create and edit), with
`image` optional and free text: there is no Glance here. Flavors are ours (Trove asks Nova);
the body is Nova's flavor, and python-troveclient's `flavor_id` and `vcpu` spellings are
accepted too. Lengths match the columns, so PostgreSQL never sees a value too long for them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

INT_MAX = 2**31 - 1  # the Integer columns
_ALNUM = re.compile(r"[0-9A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FLAVOR_ID = re.compile(r"^[A-Za-z0-9._-]{1,36}$")


def _text(value: str) -> str:
    """Trove's non_empty_string (a letter or digit somewhere), without control characters or
    surrounding spaces."""
    if not _ALNUM.search(value):
        raise ValueError("must contain a letter or a digit")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    return value


def _path_safe(value: str) -> str:
    """Datastore and version names are path segments of the public API."""
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


def _list_item(value: str) -> str:
    """Tags and packages are stored comma-separated, as Trove stores them."""
    if "," in value:
        raise ValueError("must not contain ','")
    return value


def _whole(value: Any) -> Any:
    # A JSON boolean is not a number here, although Python says it is; "512" is (Nova takes it).
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")  # noqa: TRY004 (pydantic reports ValueErrors)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


Text = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_text)]
PathName = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_text), AfterValidator(_path_safe)]
Tag = Annotated[str, Field(min_length=1, max_length=20), AfterValidator(_text), AfterValidator(_list_item)]
Package = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_text), AfterValidator(_list_item)]
# A Glance image id on OpenStack; on the local platform, the directory of the version's server
# binaries (functions/core/upgrades.py). The column holds 255 characters.
Image = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_text)]
Count = Annotated[int, BeforeValidator(_whole)]


class _Body(BaseModel):
    # Trove's mgmt schemas say additionalProperties: false; an unknown key is a typo.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: list[str], what: str) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat an item")
    return values


class DatastoreVersionCreate(_Body):
    """`{"version": {...}}`; required: name, datastore_name, datastore_manager, active."""

    name: PathName
    datastore_name: PathName
    datastore_manager: Text
    active: StrictBool
    version: PathName | None = None
    image: Image | None = None
    image_tags: Annotated[list[Tag], Field(max_length=5)] = Field(default_factory=list)
    packages: list[Package] = Field(default_factory=list)
    default: StrictBool = False
    registry_ext: Text | None = None
    repl_strategy: Text | None = None

    @model_validator(mode="after")
    def _lists(self) -> DatastoreVersionCreate:
        _unique(self.image_tags, "image_tags")
        _unique(self.packages, "packages")
        if len(",".join(self.image_tags)) > 255:
            raise ValueError("image_tags are longer than 255 characters together")
        return self


# Keys of an edit that may be null: null clears them.
NULLABLE_EDITS = {"image", "registry_ext", "repl_strategy"}


class DatastoreVersionEdit(_Body):
    """Trove's mgmt_datastore_version edit: the body itself (python-troveclient sends it
    unwrapped); every key optional, only the keys sent change."""

    name: PathName | None = None
    datastore_manager: Text | None = None
    active: StrictBool | None = None
    default: StrictBool | None = None
    image: Image | None = None
    image_tags: Annotated[list[Tag], Field(max_length=5)] | None = None
    packages: list[Package] | None = None
    registry_ext: Text | None = None
    repl_strategy: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k not in NULLABLE_EDITS)
            if nulls:
                raise ValueError(f"{', '.join(nulls)} may not be null")
        return data

    @model_validator(mode="after")
    def _lists(self) -> DatastoreVersionEdit:
        _unique(self.image_tags or [], "image_tags")
        _unique(self.packages or [], "packages")
        if len(",".join(self.image_tags or [])) > 255:
            raise ValueError("image_tags are longer than 255 characters together")
        return self


def _flavor_id(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer")  # noqa: TRY004 (pydantic reports ValueErrors)
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value != "auto" and not FLAVOR_ID.match(value):
        raise ValueError("must be 1 to 36 letters, digits, '.', '_' or '-'")
    return value


class FlavorCreate(_Body):
    """`{"flavor": {...}}`: Nova's flavor body. `id` (or `flavor_id`) absent or "auto": the
    next free integer id. `swap`, `rxtx_factor` and `service_type` (python-troveclient sends
    them) are accepted and ignored."""

    id: Annotated[str | None, BeforeValidator(_flavor_id)] = Field(
        default=None, validation_alias=AliasChoices("id", "flavor_id")
    )
    name: Text
    ram: Count = Field(ge=64, le=INT_MAX)
    vcpus: Count = Field(ge=1, le=INT_MAX, validation_alias=AliasChoices("vcpus", "vcpu"))
    disk: Count = Field(default=0, ge=0, le=INT_MAX)
    ephemeral: Count = Field(default=0, ge=0, le=INT_MAX)
    is_public: bool = True
    swap: Any = None
    rxtx_factor: Any = None
    service_type: Any = None


class FlavorEdit(_Body):
    """`{"flavor": {...}}` with any of name, ram, vcpus, disk, ephemeral, is_public."""

    name: Text | None = None
    ram: Count | None = Field(default=None, ge=64, le=INT_MAX)
    vcpus: Count | None = Field(default=None, ge=1, le=INT_MAX, validation_alias=AliasChoices("vcpus", "vcpu"))
    disk: Count | None = Field(default=None, ge=0, le=INT_MAX)
    ephemeral: Count | None = Field(default=None, ge=0, le=INT_MAX)
    is_public: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise ValueError("at least one of name, ram, vcpus, disk, ephemeral, is_public is required")
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"{', '.join(nulls)} may not be null")
        return data
