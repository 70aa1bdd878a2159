"""Publishers: POST CloudEvents to a broker ingress (or K_SINK), or collect them in memory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Protocol

from events.envelope import Message, encode_binary, encode_structured
from events.errors import EventError

BROKER_URL_ENV = "TROVELESS_BROKER_URL"
# Knative SinkBinding injects the resolved sink here.
SINK_ENV = "K_SINK"


class PublishError(EventError):
    """The broker did not accept the event; the caller keeps it (outbox) and retries later."""


class Publisher(Protocol):
    def publish(self, message: Message) -> None: ...


class HttpPublisher:
    """Sends each event in its own POST; any non-2xx answer raises PublishError."""

    def __init__(self, url: str, *, structured: bool = False, timeout_s: float = 10.0) -> None:
        self.url = url
        self.structured = structured
        self.timeout_s = timeout_s
        self._client = None
        self._lock = threading.Lock()

    def _http(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self.timeout_s)
            return self._client

    def publish(self, message: Message) -> None:
        import httpx

        headers, body = (encode_structured if self.structured else encode_binary)(message)
        try:
            response = self._http().post(self.url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise PublishError(f"POST {self.url}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise PublishError(f"POST {self.url}: HTTP {response.status_code} {response.text[:200]}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class InMemoryPublisher:
    """Collects events, for unit tests."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def publish(self, message: Message) -> None:
        self.messages.append(message)

    def types(self) -> list[str]:
        return [m.type for m in self.messages]


def publish_all(publisher: Publisher, messages: Iterable[Message]) -> None:
    for message in messages:
        publisher.publish(message)


def sink_url_from_env() -> str | None:
    """K_SINK (Knative SinkBinding) wins over TROVELESS_BROKER_URL (local platform)."""
    return os.environ.get(SINK_ENV) or os.environ.get(BROKER_URL_ENV)
