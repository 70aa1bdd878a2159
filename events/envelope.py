"""The CloudEvent envelope: the only module that imports the cloudevents SDK.

functions-framework 3.10 pins cloudevents<=1.12.0 (v1 API). Everything else in the
project uses `Message` from here, so moving to cloudevents 2.x later touches one file.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from types import MappingProxyType
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudevents.conversion import to_binary, to_structured
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from events.errors import InvalidCloudEvent

SPECVERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
REQUIRED = ("id", "source", "type", "specversion")


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z suffix, as CloudEvents producers should write `time`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    """Parse an RFC 3339 `time` attribute into an aware UTC datetime."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclass(frozen=True)
class Message:
    """An immutable CloudEvent: context attributes (all strings, read-only) plus JSON data."""

    attributes: Mapping[str, str]
    data: Any = None
    _frozen_attrs: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        attrs = {k: str(v) for k, v in self.attributes.items() if v is not None}
        missing = [name for name in REQUIRED if not attrs.get(name)]
        if missing:
            raise InvalidCloudEvent(f"missing required attribute(s): {', '.join(missing)}")
        object.__setattr__(self, "attributes", MappingProxyType(attrs))
        object.__setattr__(self, "_frozen_attrs", tuple(sorted(attrs.items())))

    def __hash__(self) -> int:
        return hash((self._frozen_attrs, canonical_json(self.data)))

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    @property
    def subject(self) -> str | None:
        return self.attributes.get("subject")

    @property
    def time(self) -> str | None:
        return self.attributes.get("time")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attributes.get(name, default)

    def with_attributes(self, **changes: str | None) -> Message:
        """A copy with attributes added, replaced, or (value None) removed."""
        attrs = dict(self.attributes)
        for key, value in changes.items():
            if value is None:
                attrs.pop(key, None)
            else:
                attrs[key] = str(value)
        return Message(attrs, self.data)

    def data_bytes(self) -> bytes:
        """Canonical JSON of the data: what signatures cover."""
        return canonical_json(self.data)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def new_message(
    type: str,
    source: str,
    data: Any,
    *,
    id: str | None = None,
    subject: str | None = None,
    time: dt.datetime | str | None = None,
    extensions: Mapping[str, str | None] | None = None,
) -> Message:
    """Build a message; `id` defaults to a fresh uuid4 and `time` to now (always set by us)."""
    if time is None:
        time = dt.datetime.now(dt.UTC)
    attrs: dict[str, str] = {
        "specversion": SPECVERSION,
        "id": id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": time if isinstance(time, str) else format_time(time),
        "datacontenttype": JSON_CONTENT_TYPE,
    }
    if subject is not None:
        attrs["subject"] = subject
    for key, value in (extensions or {}).items():
        if value is not None:
            attrs[key] = str(value)
    return Message(attrs, data)


def _to_sdk(msg: Message) -> CloudEvent:
    return CloudEvent(dict(msg.attributes), msg.data)


def _from_sdk(event: CloudEvent) -> Message:
    attrs = {k: str(v) for k, v in event.get_attributes().items() if v is not None}
    data = event.get_data()
    if isinstance(data, bytes | bytearray):
        try:
            data = json.loads(data) if data else None
        except ValueError as exc:
            raise InvalidCloudEvent(f"data is not JSON: {exc}") from exc
    return Message(attrs, data)


def decode_http(headers: Mapping[str, str], body: bytes) -> Message:
    """Parse a binary- or structured-mode HTTP CloudEvent. Raises InvalidCloudEvent."""
    try:
        event = from_http(dict(headers), body)
    except (GenericException, ValueError, TypeError, AttributeError) as exc:
        raise InvalidCloudEvent(f"not a CloudEvent: {exc}") from exc
    return _from_sdk(event)


def is_cloudevent_request(headers: Mapping[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    return "ce-id" in lowered or lowered.get("content-type", "").startswith(STRUCTURED_CONTENT_TYPE)


def encode_binary(msg: Message) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(_to_sdk(msg))
    return dict(headers), body if isinstance(body, bytes) else bytes(body or b"")


def encode_structured(msg: Message) -> tuple[dict[str, str], bytes]:
    headers, body = to_structured(_to_sdk(msg))
    return dict(headers), body if isinstance(body, bytes) else bytes(body or b"")


def to_json(msg: Message) -> str:
    """Structured-mode JSON, used to store messages in the database."""
    doc = dict(msg.attributes)
    doc["data"] = msg.data
    return json.dumps(doc, separators=(",", ":"))


def from_json(text: str) -> Message:
    doc = json.loads(text)
    data = doc.pop("data", None)
    return Message(doc, data)
