"""The pydantic model of serverless.yaml, the one registry of functions and their triggers."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infra.durations import parse_duration

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "serverless.yaml"
SPEC_ENV = "TROVELESS_SPEC"

_PATH_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,20}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Delivery(_Strict):
    """Knative's delivery spec, in its own field names."""

    retry: int = Field(default=5, ge=0)
    backoff_policy: Literal["exponential", "linear"] = Field(default="exponential", alias="backoffPolicy")
    backoff_delay: str = Field(default="PT0.5S", alias="backoffDelay")
    timeout: str = "PT30S"
    dead_letter_sink: str | None = Field(default=None, alias="deadLetterSink")

    @field_validator("backoff_delay", "timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def backoff_delay_s(self) -> float:
        return parse_duration(self.backoff_delay)

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    def backoff_s(self, failures: int) -> float:
        """Delay before the next attempt after `failures` failed attempts (Knative's formula)."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * failures
        return self.backoff_delay_s * 2 ** (failures - 1)

    def merged(self, override: DeliveryOverride | None) -> Delivery:
        if override is None:
            return self
        changes = override.model_dump(exclude_unset=True, by_alias=True)
        return Delivery.model_validate({**self.model_dump(by_alias=True), **changes})


class DeliveryOverride(_Strict):
    retry: int | None = Field(default=None, ge=0)
    backoff_policy: Literal["exponential", "linear"] | None = Field(default=None, alias="backoffPolicy")
    backoff_delay: str | None = Field(default=None, alias="backoffDelay")
    timeout: str | None = None
    dead_letter_sink: str | None = Field(default=None, alias="deadLetterSink")


class HttpTrigger(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value

    @property
    def params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


class EventTrigger(_Strict):
    """Exact-match filter on `type` (and optional extension attributes), as a Knative Trigger."""

    type: str
    attributes: dict[str, str] = Field(default_factory=dict)
    delivery: DeliveryOverride | None = None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _EXTENSION.match(name):
                raise ValueError(f"attribute {name!r} is not a valid CloudEvents attribute name")
        return value

    def matches(self, attributes: dict[str, str]) -> bool:
        if attributes.get("type") != self.type:
            return False
        return all(attributes.get(k) == v for k, v in self.attributes.items())


class ScheduleTrigger(_Strict):
    """A PingSource: standard 5-field cron. The local platform may tick faster (free there)."""

    cron: str
    local_interval_s: float | None = Field(default=None, gt=0)
    data: dict[str, object] = Field(default_factory=dict)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression")
        return value


class WebhookTrigger(_Strict):
    """Qinling-style webhook: POST to a secret URL becomes a CloudEvent of `event_type`."""

    path: str
    event_type: str


class SinkTrigger(_Strict):
    """Addressed directly as a Knative Destination (e.g. a dead-letter sink), not via a Trigger."""

    role: Literal["dead_letter_sink"] = "dead_letter_sink"


KINDS = ("http", "event", "schedule", "webhook", "sink")


class Trigger(_Strict):
    http: HttpTrigger | None = None
    event: EventTrigger | None = None
    schedule: ScheduleTrigger | None = None
    webhook: WebhookTrigger | None = None
    sink: SinkTrigger | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a trigger needs exactly one of {'/'.join(KINDS)}, got {given}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)


class Scaling(_Strict):
    min_scale: int = Field(default=0, ge=0)
    max_scale: int = Field(default=0, ge=0)
    concurrency: int = Field(default=0, ge=0)


class FunctionSpec(_Strict):
    source: str
    target: str
    signature: Literal["http", "cloudevent"] = "http"
    trigger: Trigger
    emits: list[str] = Field(default_factory=list)
    scaling: Scaling = Field(default_factory=Scaling)
    description: str = ""

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError(f"target {value!r} is not a Python identifier")
        return value


class Defaults(_Strict):
    delivery: Delivery = Field(default_factory=Delivery)


class Spec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    service: str
    namespace: str = "troveless"
    broker: str = "default"
    defaults: Defaults = Field(default_factory=Defaults)
    functions: dict[str, FunctionSpec]
    base_dir: Path = Field(default=REPO_ROOT, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        targets: dict[str, str] = {}
        routes: dict[tuple[str, str], str] = {}
        for name, fn in self.functions.items():
            if not _NAME.match(name):
                raise ValueError(f"function name {name!r} must match {_NAME.pattern}")
            if fn.target in targets:
                raise ValueError(
                    f"functions {targets[fn.target]!r} and {name!r} share target {fn.target!r}; "
                    "functions-framework registers targets by name, so they must be unique"
                )
            targets[fn.target] = name
            if fn.trigger.http:
                key = (fn.trigger.http.method, _route_shape(fn.trigger.http.path))
                if key in routes:
                    raise ValueError(f"{name!r} and {routes[key]!r} both serve {key[0]} {key[1]}")
                routes[key] = name
            sink = self.delivery_for(name).dead_letter_sink if fn.trigger.event else None
            if sink is not None and (sink not in self.functions or not self.functions[sink].trigger.sink):
                raise ValueError(f"{name!r}: deadLetterSink {sink!r} is not a declared sink function")
        return self

    def delivery_for(self, name: str) -> Delivery:
        trigger = self.functions[name].trigger.event
        return self.defaults.delivery.merged(trigger.delivery if trigger else None)

    def source_path(self, name: str) -> Path:
        return (self.base_dir / self.functions[name].source).resolve()

    def by_kind(self, kind: str) -> dict[str, FunctionSpec]:
        return {n: f for n, f in self.functions.items() if f.trigger.kind == kind}

    def subscribers(self, attributes: dict[str, str]) -> list[str]:
        """Names of the event functions whose Trigger filter matches these attributes."""
        return [
            n for n, f in self.functions.items() if f.trigger.event and f.trigger.event.matches(attributes)
        ]

    @cached_property
    def consumed_types(self) -> set[str]:
        return {f.trigger.event.type for f in self.functions.values() if f.trigger.event}


def _route_shape(path: str) -> str:
    return _PATH_PARAM.sub("{}", path.rstrip("/") or "/")


def load_spec(path: str | os.PathLike[str] | None = None) -> Spec:
    """Load and validate serverless.yaml (default: TROVELESS_SPEC, then the repository's)."""
    spec_path = Path(path or os.environ.get(SPEC_ENV) or DEFAULT_SPEC).resolve()
    with open(spec_path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{spec_path}: expected a mapping at the top level")
    return Spec.model_validate({**raw, "base_dir": spec_path.parent})
