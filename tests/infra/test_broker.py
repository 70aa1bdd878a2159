"""The local broker honours the Knative Broker contract (ingress, retry, dead letter, replies)."""

from __future__ import annotations

import subprocess
import sys

import httpx
from sqlalchemy import func, select

from events.envelope import encode_binary, encode_structured, new_message
from functions.core.models.platform import BrokerDelivery, DeadLetter
from functions.runtime import runtime
from tests.infra.platform_helpers import records, wait_for


def _post(url: str, message, structured: bool = False) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers, body = (encode_structured if structured else encode_binary)(message)
    return httpx.post(url, headers=headers, content=body, timeout=10)


def test_ingress_contract(start_platform) -> None:  # type: ignore[no-untyped-def]
    platform = start_platform()
    ingress = platform.urls["ingress"]
    event = new_message("troveless.test.nobody", "/tests", {"n": 1})
    assert _post(ingress, event).status_code == 202
    assert _post(ingress, new_message("troveless.test.nobody", "/tests", {}), structured=True).status_code == 202
    assert httpx.post(ingress, json={"not": "an event"}).status_code == 400
    assert httpx.get(ingress).status_code == 405
    options = httpx.options(ingress)
    assert options.status_code == 200 and "POST" in options.headers["Allow"]
    assert _post(ingress.rsplit("/", 1)[0] + "/other", event).status_code == 404
    # Hop limit: an event whose TTL is used up is refused.
    spent = event.with_attributes(knativebrokerttl="0")
    assert _post(ingress, spent).status_code == 400


def test_failing_subscriber_is_retried_with_backoff_then_dead_lettered(start_platform, record_dir, database_url) -> None:  # type: ignore[no-untyped-def]
    platform = start_platform()
    event = new_message("troveless.test.fail", "/tests", {"please": "fail"})
    assert _post(platform.urls["ingress"], event).status_code == 202

    sessions = runtime().sessions

    def dead() -> list[DeadLetter]:
        with sessions() as s:
            return list(s.execute(select(DeadLetter)).scalars())

    letters = wait_for(dead, what="the dead letter")
    attempts = records(record_dir, "always_fail")
    # retry: 3 in the test spec -> 4 attempts in all, then the dead-letter sink.
    assert len(attempts) == 4
    gaps = [b["t"] - a["t"] for a, b in zip(attempts, attempts[1:], strict=False)]
    # Exponential backoff from PT0.2S: 0.2, 0.4, 0.8 s (the broker polls, so allow some slack).
    for gap, expected in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert expected * 0.9 <= gap <= expected + 1.0, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    [letter] = letters
    assert letter.event_id == event.id and letter.event_type == "troveless.test.fail"
    assert letter.error_code == "500"
    assert letter.error_dest and letter.error_dest.endswith("/always_fail/")
    # The sink's delivery is retired right after the sink answered.
    def queue_empty() -> bool:
        with sessions() as s:
            return s.execute(select(func.count()).select_from(BrokerDelivery)).scalar_one() == 0

    wait_for(queue_empty, what="the dead-letter delivery to be retired")

    out = subprocess.run(
        [sys.executable, "-m", "infra", "dead-letters", "--database-url", database_url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert event.id in out and "troveless.test.fail" in out and "500" in out


def test_reply_event_reaches_the_next_function(start_platform, record_dir) -> None:  # type: ignore[no-untyped-def]
    platform = start_platform()
    event = new_message("troveless.test.bounce", "/tests", {}, subject="thing-1")
    assert _post(platform.urls["ingress"], event).status_code == 202
    caught = wait_for(lambda: records(record_dir, "catch_bounced"), what="the reply")
    assert caught[0]["data"] == {"from": event.id}
    assert len(records(record_dir, "bounce")) == 1
