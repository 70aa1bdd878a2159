"""The CloudEvent envelope: HTTP encodings, JSON storage, Message semantics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest

from events.envelope import (
    JSON_CONTENT_TYPE,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    Message,
    decode_http,
    encode_binary,
    encode_structured,
    format_time,
    from_json,
    is_cloudevent_request,
    new_message,
    parse_time,
    to_json,
)
from events.errors import InvalidCloudEvent, PermanentEventError


def _sample(**extensions: str) -> Message:
    return new_message(
        "troveless.test.sample",
        "/troveless/tests",
        {"name": "db1", "size": 2, "tags": ["a", "b"], "nested": {"x": None}},
        subject="instances/db1",
        extensions=extensions or None,
    )


def test_binary_round_trip_gives_equal_message() -> None:
    msg = _sample()
    headers, body = encode_binary(msg)
    assert "ce-id" in {k.lower() for k in headers}
    assert decode_http(headers, body) == msg


def test_structured_round_trip_gives_equal_message() -> None:
    msg = _sample()
    headers, body = encode_structured(msg)
    assert headers["content-type"].startswith(STRUCTURED_CONTENT_TYPE)
    assert json.loads(body)["id"] == msg.id
    assert decode_http(headers, body) == msg


def test_binary_and_structured_decode_to_the_same_message() -> None:
    msg = _sample(sequence="00000000000000000042", partitionkey="db1")
    assert decode_http(*encode_binary(msg)) == decode_http(*encode_structured(msg))


@pytest.mark.parametrize("encode", [encode_binary, encode_structured])
def test_extensions_survive_http(encode) -> None:  # type: ignore[no-untyped-def]
    msg = _sample(sequence="00000000000000000042", keyid="guest-1", partitionkey="db1")
    decoded = decode_http(*encode(msg))
    assert decoded.get("sequence") == "00000000000000000042"
    assert decoded.get("keyid") == "guest-1"
    assert decoded.get("partitionkey") == "db1"
    assert decoded.subject == "instances/db1"


def test_title_case_headers_are_accepted() -> None:
    msg = _sample()
    headers, body = encode_binary(msg)
    titled = {"-".join(p.capitalize() for p in k.split("-")): v for k, v in headers.items()}
    assert decode_http(titled, body) == msg


@pytest.mark.parametrize("encode", [encode_binary, encode_structured])
@pytest.mark.parametrize("data", [None, [1, 2], 5, {"a": {"b": [True, None]}}])
def test_json_data_round_trips(encode, data) -> None:  # type: ignore[no-untyped-def]
    msg = new_message("troveless.test.sample", "/s", data)
    assert decode_http(*encode(msg)).data == data


def test_json_string_data_round_trips() -> None:
    """A JSON string stays a string: the SDK decodes the body once and we must not again.
    (The SDK itself carries an empty string as "no data", so "" is not part of the promise.)"""
    wrong = []
    for data in ("hello", "123", "{}"):
        msg = new_message("troveless.test.sample", "/s", data)
        for encode in (encode_binary, encode_structured):
            try:
                got = decode_http(*encode(msg)).data
            except InvalidCloudEvent as exc:
                got = f"<InvalidCloudEvent: {exc}>"
            if got != data:
                wrong.append(f"{encode.__name__}({data!r}) -> {got!r}")
    assert not wrong, "JSON string data does not survive HTTP: " + "; ".join(wrong)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, b'{"hello": "world"}'),
        ({}, b""),
        ({"content-type": "text/plain"}, b"hello"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, b"not json at all"),
    ],
)
def test_decode_refuses_non_cloudevents(headers, body) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidCloudEvent):
        decode_http(headers, body)


@pytest.mark.parametrize("missing", ["id", "source", "type"])
def test_decode_refuses_missing_required_attributes_binary(missing: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "content-type": "application/json",
    }
    del headers[f"ce-{missing}"]
    with pytest.raises(InvalidCloudEvent):
        decode_http(headers, b"{}")


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_decode_refuses_missing_required_attributes_structured(missing: str) -> None:
    doc = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": {}}
    del doc[missing]
    with pytest.raises(InvalidCloudEvent):
        decode_http({"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(doc).encode())


def test_decode_refuses_binary_event_with_malformed_json_body() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "content-type": "application/json",
    }
    with pytest.raises(InvalidCloudEvent) as info:
        decode_http(headers, b'{"unterminated": ')
    assert isinstance(info.value, PermanentEventError)


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_message_requires_required_attributes(missing: str) -> None:
    attrs = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    attrs[missing] = ""
    with pytest.raises(InvalidCloudEvent):
        Message(attrs, None)


def test_to_json_from_json_round_trip() -> None:
    msg = _sample(sequence="00000000000000000007")
    text = to_json(msg)
    assert json.loads(text)["data"] == msg.data
    assert from_json(text) == msg


def test_message_is_immutable() -> None:
    msg = _sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.data = {"other": True}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.attributes = {}  # type: ignore[misc]


def test_message_attributes_cannot_be_mutated_in_place() -> None:
    """A Message is immutable: its attributes cannot be changed after signing or storing,
    and it is hashable."""
    msg = _sample()
    try:
        msg.attributes["type"] = "troveless.test.changed"  # type: ignore[index]
    except TypeError:
        pass
    assert msg.type == "troveless.test.sample", "Message.attributes is a mutable dict"


def test_with_attributes_adds_replaces_and_removes() -> None:
    msg = _sample(partitionkey="db1")
    changed = msg.with_attributes(partitionkey=None, subject="other", keyid="k")
    assert changed.get("partitionkey") is None
    assert "partitionkey" not in changed.attributes
    assert changed.subject == "other"
    assert changed.get("keyid") == "k"
    # the original is untouched
    assert msg.get("partitionkey") == "db1"
    assert msg.subject == "instances/db1"
    assert msg.get("keyid") is None
    # removing an attribute that is absent is a no-op
    assert msg.with_attributes(nothere=None) == msg


def test_with_attributes_cannot_remove_required() -> None:
    with pytest.raises(InvalidCloudEvent):
        _sample().with_attributes(id=None)


def test_new_message_defaults() -> None:
    msg = new_message("troveless.test.sample", "/s", {"a": 1})
    assert str(uuid.UUID(msg.id)) == msg.id
    assert msg.get("specversion") == SPECVERSION == "1.0"
    assert msg.get("datacontenttype") == JSON_CONTENT_TYPE
    assert msg.time is not None and msg.time.endswith("Z")
    assert abs((dt.datetime.now(dt.UTC) - parse_time(msg.time)).total_seconds()) < 5
    assert msg.subject is None
    assert new_message("t", "/s", None).id != new_message("t", "/s", None).id


def test_new_message_explicit_values_and_none_extensions() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    msg = new_message(
        "t", "/s", [], id="fixed", subject="sub", time=moment, extensions={"a": "1", "b": None}
    )
    assert msg.id == "fixed"
    assert msg.subject == "sub"
    assert msg.time == "2024-05-06T07:08:09.123456Z"
    assert msg.get("a") == "1"
    assert "b" not in msg.attributes


def test_format_and_parse_time_round_trip() -> None:
    moment = dt.datetime(2024, 2, 29, 23, 59, 58, 1, tzinfo=dt.UTC)
    text = format_time(moment)
    assert text == "2024-02-29T23:59:58.000001Z"
    assert parse_time(text) == moment
    assert parse_time(text).tzinfo is not None


def test_format_time_converts_to_utc_and_treats_naive_as_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert format_time(dt.datetime(2024, 1, 1, 12, 0, tzinfo=plus2)) == "2024-01-01T10:00:00.000000Z"
    assert format_time(dt.datetime(2024, 1, 1, 12, 0)) == "2024-01-01T12:00:00.000000Z"
    now = dt.datetime.now(dt.UTC)
    assert parse_time(format_time(now)) == now
    assert parse_time("2024-01-01T12:00:00+02:00") == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)


def test_is_cloudevent_request() -> None:
    binary_headers, _ = encode_binary(_sample())
    structured_headers, _ = encode_structured(_sample())
    assert is_cloudevent_request(binary_headers)
    assert is_cloudevent_request({"Ce-Id": "1", "Content-Type": "application/json"})
    assert is_cloudevent_request(structured_headers)
    assert is_cloudevent_request({"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert not is_cloudevent_request({"Content-Type": "application/json"})
    assert not is_cloudevent_request({})
