"""Publishers: a real HTTP round trip to a local server, and the in-memory collector."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from events.envelope import STRUCTURED_CONTENT_TYPE, Message, decode_http, new_message
from events.errors import EventError
from events.publisher import (
    BROKER_URL_ENV,
    SINK_ENV,
    HttpPublisher,
    InMemoryPublisher,
    PublishError,
    publish_all,
    sink_url_from_env,
)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Broker:
    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 202


@pytest.fixture
def broker() -> Iterator[Broker]:
    state = Broker(url="")

    @Request.application
    def app(request: Request) -> Response:
        state.received.append(
            Received(request.method, request.path, dict(request.headers), request.get_data())
        )
        return Response("" if state.status < 300 else "broker is down", status=state.status)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/ingress"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _sample() -> Message:
    return new_message(
        "troveless.test.published",
        "/troveless/tests",
        {"name": "db1", "ids": [1, 2, 3]},
        subject="instances/db1",
        extensions={"partitionkey": "db1", "sequence": "00000000000000000001"},
    )


def test_binary_mode_round_trip_through_a_real_server(broker: Broker) -> None:
    msg = _sample()
    publisher = HttpPublisher(broker.url)
    try:
        publisher.publish(msg)
    finally:
        publisher.close()
    assert len(broker.received) == 1
    got = broker.received[0]
    assert got.method == "POST" and got.path == "/ingress"
    lowered = {k.lower(): v for k, v in got.headers.items()}
    assert lowered["ce-id"] == msg.id
    assert lowered["content-type"].startswith("application/json")
    assert decode_http(got.headers, got.body) == msg


def test_structured_mode_through_a_real_server(broker: Broker) -> None:
    msg = _sample()
    publisher = HttpPublisher(broker.url, structured=True)
    try:
        publisher.publish(msg)
        publisher.publish(msg.with_attributes(id="second"))
    finally:
        publisher.close()
    assert len(broker.received) == 2
    got = broker.received[0]
    lowered = {k.lower(): v for k, v in got.headers.items()}
    assert lowered["content-type"].startswith(STRUCTURED_CONTENT_TYPE)
    assert "ce-id" not in lowered
    assert decode_http(got.headers, got.body) == msg
    assert decode_http(broker.received[1].headers, broker.received[1].body).id == "second"


@pytest.mark.parametrize("status", [500, 404, 301])
def test_non_2xx_answer_raises_publish_error(broker: Broker, status: int) -> None:
    broker.status = status
    publisher = HttpPublisher(broker.url)
    try:
        with pytest.raises(PublishError) as info:
            publisher.publish(_sample())
    finally:
        publisher.close()
    assert str(status) in str(info.value)
    assert isinstance(info.value, EventError)
    assert len(broker.received) == 1


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_raises_publish_error() -> None:
    publisher = HttpPublisher(f"http://127.0.0.1:{_closed_port()}/", timeout_s=2)
    try:
        with pytest.raises(PublishError):
            publisher.publish(_sample())
    finally:
        publisher.close()


def test_publish_all_over_http(broker: Broker) -> None:
    messages = [_sample().with_attributes(id=f"m{i}") for i in range(3)]
    publisher = HttpPublisher(broker.url)
    try:
        publish_all(publisher, messages)
    finally:
        publisher.close()
    assert [decode_http(r.headers, r.body).id for r in broker.received] == ["m0", "m1", "m2"]


def test_in_memory_publisher_collects() -> None:
    publisher = InMemoryPublisher()
    first = _sample()
    second = new_message("troveless.test.other", "/s", None)
    publish_all(publisher, [first, second])
    assert publisher.messages == [first, second]
    assert publisher.types() == ["troveless.test.published", "troveless.test.other"]


def test_sink_url_prefers_k_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SINK_ENV, "http://sink.example/")
    monkeypatch.setenv(BROKER_URL_ENV, "http://broker.example/")
    assert sink_url_from_env() == "http://sink.example/"


def test_sink_url_falls_back_to_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SINK_ENV, raising=False)
    monkeypatch.setenv(BROKER_URL_ENV, "http://broker.example/")
    assert sink_url_from_env() == "http://broker.example/"
    monkeypatch.setenv(SINK_ENV, "")
    assert sink_url_from_env() == "http://broker.example/"


def test_sink_url_none_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SINK_ENV, raising=False)
    monkeypatch.delenv(BROKER_URL_ENV, raising=False)
    assert sink_url_from_env() is None
