"""A local broker with the Knative Broker contract, durable in the shared database.

Ingress: `POST /<namespace>/<broker>` with a binary or structured CloudEvent -> 202 once the
event is stored (one queue row per matching Trigger); 400 for a non-event or an exhausted
hop limit (`knativebrokerttl`); OPTIONS -> 200; other methods 405; other paths 404.

Dispatch: each queue row is POSTed (binary mode, `Prefer: reply`) to its subscriber with the
Trigger's per-attempt timeout. 2xx = done; 200 carrying a CloudEvent = a reply, stored in
the same transaction that retires the delivery, then routed like any new event. 404, 408,
409, 429, 5xx and network errors are retried with the Trigger's backoff; other 4xx are not.
After the last retry the event goes to the dead-letter sink with `knativeerrordest`,
`knativeerrorcode` and `knativeerrordata`. The sink itself is retried until it succeeds.

Deliveries are leased while in flight; a crashed platform's leases are released when the
next one starts (only one platform runs per data directory), so no event is lost.

Chaos switches for tests: duplicate deliveries, random order, random delays.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from events.envelope import Message, decode_http, encode_binary, from_json, is_cloudevent_request, to_json
from events.errors import InvalidCloudEvent
from functions.core.models.base import utcnow
from functions.core.models.platform import BrokerDelivery
from infra.spec import Delivery, Spec

log = logging.getLogger("troveless.broker")

TTL_ATTR = "knativebrokerttl"
MAX_TTL = 255
RETRYABLE = {404, 408, 409, 429}
DEAD_LETTER_MAX_DELAY_S = 60.0
LEASE_GRACE_S = 5.0


@dataclass(frozen=True)
class Chaos:
    """Test switches: each delivery is duplicated with probability `duplicate`, delayed by up
    to `delay_max_s`, and due deliveries are taken in random order when `reorder`."""

    duplicate: float = 0.0
    reorder: bool = False
    delay_max_s: float = 0.0
    seed: int | None = None

    @property
    def active(self) -> bool:
        return self.duplicate > 0 or self.reorder or self.delay_max_s > 0


class HopLimitExceeded(InvalidCloudEvent):
    pass


class LocalBroker:
    def __init__(
        self,
        spec: Spec,
        sessions: sessionmaker[Session],
        function_url: Callable[[str], str],
        *,
        chaos: Chaos = Chaos(),
        workers: int = 8,
        poll_s: float = 1.0,
    ) -> None:
        self.spec = spec
        self.name = spec.broker
        self.sessions = sessions
        self.function_url = function_url
        self.chaos = chaos
        self.workers = workers
        self.poll_s = poll_s
        self._random = random.Random(chaos.seed)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._http = httpx.Client()

    @property
    def path(self) -> str:
        return f"/{self.spec.namespace}/{self.name}"

    # ---- ingress ------------------------------------------------------------------------

    def ingest(self, message: Message, session: Session | None = None) -> int:
        """Store one delivery per matching Trigger; returns how many. Raises HopLimitExceeded."""
        ttl = int(message.get(TTL_ATTR) or MAX_TTL)
        if ttl <= 0:
            raise HopLimitExceeded(f"event {message.id} exceeded the hop limit ({TTL_ATTR})")
        stored = message.with_attributes(**{TTL_ATTR: str(ttl - 1)})
        subscribers = self.spec.subscribers(dict(message.attributes))
        if not subscribers:
            log.info("no trigger matches %s (%s); dropped", message.type, message.id)
            return 0
        now = utcnow()
        rows = []
        for name in subscribers:
            copies = 2 if self.chaos.duplicate and self._random.random() < self.chaos.duplicate else 1
            for _ in range(copies):
                delay = self._random.uniform(0, self.chaos.delay_max_s) if self.chaos.delay_max_s else 0.0
                rows.append(
                    BrokerDelivery(
                        broker=self.name,
                        trigger=name,
                        subscriber=name,
                        kind="deliver",
                        event=to_json(stored),
                        next_attempt_at=now + dt.timedelta(seconds=delay),
                    )
                )
        if session is None:
            with self.sessions.begin() as own:
                own.add_all(rows)
        else:
            session.add_all(rows)
        self._wake.set()
        return len(rows)

    def ingress_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        path = (environ.get("PATH_INFO") or "/").rstrip("/")
        if path != self.path:
            return _reply(start_response, "404 Not Found", b"unknown broker\n")
        if method == "OPTIONS":
            return _reply(start_response, "200 OK", b"", [("Allow", "POST, OPTIONS"), ("WebHook-Allowed-Origin", "*")])
        if method != "POST":
            return _reply(start_response, "405 Method Not Allowed", b"", [("Allow", "POST, OPTIONS")])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        try:
            message = decode_http(headers, body)
            self.ingest(message)
        except InvalidCloudEvent as exc:
            return _reply(start_response, "400 Bad Request", f"{exc}\n".encode())
        except Exception:
            log.exception("could not store an event")
            return _reply(start_response, "500 Internal Server Error", b"storage failure\n")
        return _reply(start_response, "202 Accepted", b"")

    # ---- dispatch -----------------------------------------------------------------------

    def release_leases(self) -> int:
        """Make deliveries leased by a dead platform due again (we hold the data-dir lock)."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(BrokerDelivery)
                .where(BrokerDelivery.broker == self.name, BrokerDelivery.lease_until.is_not(None))
                .values(lease_until=None)
            )
        return result.rowcount or 0

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="broker-dispatch")
        self._thread = threading.Thread(target=self._loop, name="broker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            claimed = []
            try:
                with self._lock:
                    free = self.workers - self._in_flight
                if free > 0:
                    claimed = self._claim(free)
            except Exception:
                log.exception("broker could not read its queue; retrying")
            for row_id in claimed:
                with self._lock:
                    self._in_flight += 1
                assert self._pool is not None
                self._pool.submit(self._deliver_guarded, row_id)
            if not claimed:
                self._wake.wait(self._idle_wait())
                self._wake.clear()

    def _idle_wait(self) -> float:
        """Sleep until the next delayed delivery is due (retries keep their backoff exactly),
        at most `poll_s`; new events wake the loop at once."""
        try:
            with self.sessions() as session:
                due = session.execute(
                    select(func.min(BrokerDelivery.next_attempt_at)).where(
                        BrokerDelivery.broker == self.name, BrokerDelivery.lease_until.is_(None)
                    )
                ).scalar_one()
        except Exception:
            return self.poll_s
        if due is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, (due - utcnow()).total_seconds()))

    def _claim(self, limit: int) -> list[int]:
        now = utcnow()
        with self.sessions.begin() as session:
            query = (
                select(BrokerDelivery)
                .where(
                    BrokerDelivery.broker == self.name,
                    BrokerDelivery.next_attempt_at <= now,
                    or_(BrokerDelivery.lease_until.is_(None), BrokerDelivery.lease_until < now),
                )
                .order_by(func.random() if self.chaos.reorder else BrokerDelivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            rows = list(session.execute(query).scalars())
            for row in rows:
                timeout = self._delivery(row).timeout_s
                row.lease_until = now + dt.timedelta(seconds=timeout + LEASE_GRACE_S)
            return [row.id for row in rows]

    def _delivery(self, row: BrokerDelivery) -> Delivery:
        if row.kind == "dead_letter":
            return self.spec.defaults.delivery
        return self.spec.delivery_for(row.trigger)

    def _deliver_guarded(self, row_id: int) -> None:
        try:
            self._deliver(row_id)
        except Exception:
            log.exception("delivery %s failed inside the broker; it will be retried", row_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()

    def _deliver(self, row_id: int) -> None:
        with self.sessions() as session:
            row = session.get(BrokerDelivery, row_id)
            if row is None:
                return
            session.expunge(row)
        message = from_json(row.event)
        delivery = self._delivery(row)
        url = self.function_url(row.subscriber)
        headers, body = encode_binary(message.with_attributes(**{TTL_ATTR: None}))
        headers["Prefer"] = "reply"
        status, text, reply = None, "", None
        try:
            response = self._http.post(url, headers=headers, content=body, timeout=delivery.timeout_s)
            status, text = response.status_code, response.text[:2000]
            if response.status_code == 200 and is_cloudevent_request(response.headers):
                reply = decode_http(dict(response.headers), response.content)
        except InvalidCloudEvent as exc:
            status, text = 502, f"unreadable reply: {exc}"
        except httpx.TimeoutException:
            text = f"no answer within {delivery.timeout_s:g}s"
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            self._succeeded(row, message, reply)
        else:
            self._failed(row, message, delivery, status, text, url)

    def _succeeded(self, row: BrokerDelivery, message: Message, reply: Message | None) -> None:
        with self.sessions.begin() as session:
            if reply is not None:
                # Knative re-attaches the delivered event's TTL to the reply before re-ingesting.
                ttl = message.get(TTL_ATTR)
                try:
                    self.ingest(reply.with_attributes(**{TTL_ATTR: ttl}), session)
                except HopLimitExceeded as exc:
                    log.warning("%s", exc)
            session.execute(delete(BrokerDelivery).where(BrokerDelivery.id == row.id))
        log.info(
            "delivered %s %s to %s%s", message.type, message.id, row.subscriber,
            f" -> reply {reply.type}" if reply else "",
        )

    def _failed(
        self, row: BrokerDelivery, message: Message, delivery: Delivery, status: int | None, text: str, url: str
    ) -> None:
        attempts = row.attempts + 1
        retryable = status is None or status >= 500 or status in RETRYABLE
        now = utcnow()
        with self.sessions.begin() as session:
            values: dict[str, Any] = {"attempts": attempts, "last_status": status, "last_error": text, "lease_until": None}
            if row.kind == "dead_letter":
                # The sink must not lose anything: keep trying, with a capped backoff.
                delay = min(delivery.backoff_s(attempts), DEAD_LETTER_MAX_DELAY_S)
                values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
                log.error("dead-letter sink %s refused %s (%s); retrying", row.subscriber, message.id, status)
            elif retryable and attempts <= delivery.retry:
                values["next_attempt_at"] = now + dt.timedelta(seconds=delivery.backoff_s(attempts))
                log.warning(
                    "delivery of %s to %s failed (%s: %s); retry %d/%d in %.1fs",
                    message.id, row.subscriber, status, text[:120], attempts, delivery.retry, delivery.backoff_s(attempts),
                )
            elif delivery.dead_letter_sink:
                log.error(
                    "giving up on %s (%s) for %s after %d attempt(s): %s; dead-lettered",
                    message.id, message.type, row.subscriber, attempts, status,
                )
                dead = message.with_attributes(
                    knativeerrordest=url,
                    knativeerrorcode=str(status) if status is not None else None,
                    knativeerrordata=base64.b64encode(text.encode()).decode() if text else None,
                )
                values.update(
                    kind="dead_letter",
                    subscriber=delivery.dead_letter_sink,
                    event=to_json(dead),
                    attempts=0,
                    next_attempt_at=now,
                )
            else:
                log.error("dropping %s for %s: failed and no dead-letter sink", message.id, row.subscriber)
                session.execute(delete(BrokerDelivery).where(BrokerDelivery.id == row.id))
                return
            session.execute(update(BrokerDelivery).where(BrokerDelivery.id == row.id).values(**values))

    # ---- observation (CLI, tests) ---------------------------------------------------------

    def pending(self) -> int:
        with self.sessions() as session:
            return session.execute(
                select(func.count()).select_from(BrokerDelivery).where(BrokerDelivery.broker == self.name)
            ).scalar_one()


def _reply(start_response: Callable[..., Any], status: str, body: bytes, headers=()) -> list[bytes]:  # type: ignore[no-untyped-def]
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *headers])
    return [body]
