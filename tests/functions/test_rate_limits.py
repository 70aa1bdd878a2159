"""API rate limits: counted in the shared database, so every function instance (and every
process) draws on the same window; 413 overLimit with Retry-After when used up; GET /limits
shows what is left."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from werkzeug.test import Client

from functions.core import rate_limits
from functions.core.auth import TokenFile
from functions.core.errors import OverLimit
from functions.core.models.quota import RateLimitWindow
from functions.runtime import reset_runtime, runtime

FF = str(Path(sys.executable).parent / "functions-framework")
REPO = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2025, 11, 23, 12, 0, 30)  # half way through a minute's window


@pytest.fixture
def limited(api, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TROVELESS_HTTP_GET_RATE", "4")
    monkeypatch.setenv("TROVELESS_HTTP_POST_RATE", "3")
    monkeypatch.setenv("TROVELESS_HTTP_MGMT_POST_RATE", "1")
    monkeypatch.setenv("TROVELESS_HTTP_PUT_RATE", "-1")  # off
    reset_runtime()
    return api


@pytest.fixture
def clock(monkeypatch):  # type: ignore[no-untyped-def]
    now = [T0]
    monkeypatch.setattr(rate_limits, "utcnow", lambda: now[0])
    return now


def _fault(r):  # type: ignore[no-untyped-def]
    return r.get_json()["overLimit"]["message"]


def test_the_next_request_past_the_limit_is_413_until_the_window_ends(limited, clock) -> None:  # type: ignore[no-untyped-def]
    api = limited
    for _ in range(3):
        assert api("GET", "/flavors").status_code == 200
    entries = api("GET", "/limits").get_json()["limits"]  # the 4th GET: counted before it answers
    assert entries[0]["verb"] == "ABSOLUTE"
    assert entries[1:] == [
        {"verb": "POST", "uri": "*", "regex": ".*", "value": 3, "unit": "MINUTE", "remaining": 3,
         "nextAvailable": "2025-11-23T12:00:30Z"},
        {"verb": "DELETE", "uri": "*", "regex": ".*", "value": 200, "unit": "MINUTE", "remaining": 200,
         "nextAvailable": "2025-11-23T12:00:30Z"},
        {"verb": "GET", "uri": "*", "regex": ".*", "value": 4, "unit": "MINUTE", "remaining": 0,
         "nextAvailable": "2025-11-23T12:01:00Z"},
        {"verb": "POST", "uri": "*/mgmt", "regex": "^/mgmt", "value": 1, "unit": "MINUTE", "remaining": 1,
         "nextAvailable": "2025-11-23T12:00:30Z"},
    ]
    r = api("GET", "/flavors")
    assert r.status_code == 413 and r.headers["Retry-After"] == "30"
    assert _fault(r) == "This request was rate-limited. Only 4 GET request(s) can be made to * every minute."
    clock[0] = T0 + dt.timedelta(seconds=29)
    r = api("GET", "/instances")
    assert r.status_code == 413 and r.headers["Retry-After"] == "1"
    # Other verbs and other projects have their own counters; PUT is not limited (-1).
    assert api("GET", "/flavors", project="p2").status_code == 200
    for _ in range(5):
        assert api("PUT", "/instances/nope", json={"instance": {"name": "x"}}).status_code == 404
    # Refused requests are not counted: the next window starts from zero.
    clock[0] = T0 + dt.timedelta(seconds=30)
    for _ in range(4):
        assert api("GET", "/flavors").status_code == 200
    assert api("GET", "/flavors").status_code == 413


def test_post_on_mgmt_draws_on_both_post_limits(limited, clock) -> None:  # type: ignore[no-untyped-def]
    api = limited
    ops = TokenFile(Path(os.environ["TROVELESS_TOKEN_FILE"])).issue("p3", "ops", ("admin", "member"))

    def as_ops(method: str, path: str, **kw):  # type: ignore[no-untyped-def]
        return api(method, path, project="p3", token="p1", headers={"X-Auth-Token": ops}, **kw)

    assert as_ops("POST", "/mgmt/instances/nope/action", json={"reboot": {}}).status_code == 404
    r = as_ops("POST", "/mgmt/instances/nope/action", json={"reboot": {}})
    assert r.status_code == 413 and "Only 1 POST request(s) can be made to */mgmt every minute." in _fault(r)
    # The refused request took nothing from "POST *" either (one transaction, rolled back).
    post = {(e["verb"], e["uri"]): e["remaining"] for e in as_ops("GET", "/limits").get_json()["limits"][1:]}
    assert post[("POST", "*")] == 2 and post[("POST", "*/mgmt")] == 0
    assert as_ops("POST", "/instances/nope/action", json={"restart": {}}).status_code == 404
    assert as_ops("POST", "/instances/nope/action", json={"restart": {}}).status_code == 404
    r = as_ops("POST", "/instances/nope/action", json={"restart": {}})
    assert r.status_code == 413 and "Only 3 POST request(s)" in _fault(r)


def test_unauthenticated_and_public_requests_are_not_counted(limited, clock, gateway) -> None:  # type: ignore[no-untyped-def]
    for _ in range(6):
        assert gateway.get("/v1.0/").status_code == 200
        assert gateway.get("/v1.0/p1/flavors").status_code == 401
        assert gateway.get("/v1.0/p1/flavors", headers={"X-Auth-Token": "wrong"}).status_code == 401
    with runtime().sessions() as s:
        assert s.execute(select(RateLimitWindow)).first() is None


def test_concurrent_requests_get_exactly_the_limit(limited, clock, gateway) -> None:  # type: ignore[no-untyped-def]
    token = TokenFile(Path(os.environ["TROVELESS_TOKEN_FILE"])).issue("p1", "racer", ("member",))
    barrier = threading.Barrier(30)
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        client = Client(gateway.application)
        barrier.wait()
        status = client.get("/v1.0/p1/flavors", headers={"X-Auth-Token": token}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert Counter(statuses) == {200: 4, 413: 26}
    with runtime().sessions() as s:
        assert s.execute(select(RateLimitWindow.count)).scalar_one() == 4


def test_ended_windows_are_purged(limited) -> None:  # type: ignore[no-untyped-def]
    limits = [rate_limits.Limit("GET", "*", ".*", 2)]
    rt = runtime()
    rate_limits.hit("p1", "GET", "/v1.0/p1/flavors", now=T0, sessions=rt.sessions, limits=limits)
    rate_limits.hit("p1", "GET", "/v1.0/p1/flavors", now=T0, sessions=rt.sessions, limits=limits)
    with pytest.raises(OverLimit) as refused:
        rate_limits.hit("p1", "GET", "/v1.0/p1/flavors", now=T0, sessions=rt.sessions, limits=limits)
    assert refused.value.retry_after_s == 30
    later = T0 + dt.timedelta(seconds=45)  # the next window
    rate_limits.hit("p1", "GET", "/v1.0/p1/flavors", now=later, sessions=rt.sessions, limits=limits)
    with rt.transaction() as s:
        assert rate_limits.purge(s, now=later) == 1
    with rt.sessions() as s:
        assert s.execute(select(RateLimitWindow.window_start, RateLimitWindow.count)).all() == [
            (dt.datetime(2025, 11, 23, 12, 1), 1)]
    # The sweep schedule's tick purges whatever has ended by now (the real clock: all of it).
    from functions_framework import create_app

    from events.envelope import encode_binary, new_message
    from events.schedule import ScheduleTick

    headers, data = encode_binary(new_message(ScheduleTick.TYPE, "/apis/v1/namespaces/troveless/pingsources/x", {}))
    r = create_app("sweep_workflows", str(REPO / "functions/schedules.py")).test_client().post("/", headers=headers, data=data)
    assert r.status_code == 202
    with rt.sessions() as s:
        assert s.execute(select(RateLimitWindow)).first() is None


def test_two_processes_share_one_counter(api, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """This process's gateway and a second process serving GET /limits alone (its own
    runtime, its own connections) draw on the same window."""
    monkeypatch.setenv("TROVELESS_HTTP_GET_RATE", "5")
    reset_runtime()
    port = _free_port()
    with open(tmp_path / "ff.log", "wb") as log:
        proc = subprocess.Popen(
            [FF, "--source", str(REPO / "functions/api/limits.py"), "--target", "list_limits",
             "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "TROVELESS_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        remote = f"http://127.0.0.1:{port}/v1.0/p1/limits"
        _wait_serving(proc, f"http://127.0.0.1:{port}/", tmp_path / "ff.log")
        _clear_of_a_window_edge()
        assert api("GET", "/flavors").status_code == 200
        assert api("GET", "/flavors").status_code == 200
        token = {"X-Auth-Token": _token()}
        for left in (2, 1, 0):
            r = httpx.get(remote, headers=token, timeout=10)
            assert r.status_code == 200, r.text
            [get] = [e for e in r.json()["limits"] if e["verb"] == "GET"]
            assert get["remaining"] == left and get["nextAvailable"].endswith("Z")
        r = api("GET", "/flavors")
        assert r.status_code == 413 and 1 <= int(r.headers["Retry-After"]) <= 60
        r = httpx.get(remote, headers=token, timeout=10)
        assert r.status_code == 413 and "Retry-After" in r.headers
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _token() -> str:
    return TokenFile(Path(os.environ["TROVELESS_TOKEN_FILE"])).issue("p1", "u9", ("member",))


def _clear_of_a_window_edge() -> None:
    """The real clock is used across processes: keep the test inside one minute's window."""
    second = time.time() % 60
    if second > 45:
        time.sleep(60 - second + 0.5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_serving(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            httpx.get(url, timeout=1)  # 404 before authentication: not counted
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "functions-framework did not start"
            time.sleep(0.05)
