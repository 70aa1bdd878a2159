"""Every function in serverless.yaml also runs alone, the standard way:
`functions-framework --source <file> --target <name>` (what one Knative Service runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from events.envelope import decode_http, encode_binary, new_message
from events.schedule import ScheduleTick
from functions.core.auth import TokenFile
from functions.core.db import make_engine, make_sessionmaker
from functions.core.models.datastore import Flavor
from functions.core.models.platform import DeadLetter, WorkflowRun
from functions.core.workflow import step_message
from functions.tasks.selfcheck import SELFCHECK
from infra.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
FF = str(Path(sys.executable).parent / "functions-framework")


def _distinct_free_ports(count: int) -> list[int]:
    """Ports free now and distinct from each other: every socket stays bound until all are
    chosen, so the kernel cannot hand the same ephemeral port to two functions."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """Start every product function in its own functions-framework process."""
    spec = load_spec()
    token_file = tmp_path / "tokens.json"
    token = TokenFile(token_file).issue("proj1", "u1", ("member",))
    env = {
        **os.environ,
        "TROVELESS_DATABASE_URL": database_url,
        "TROVELESS_TOKEN_FILE": str(token_file),
        "TROVELESS_DATA_DIR": str(tmp_path),
    }
    env.pop("TROVELESS_BROKER_URL", None)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    ports = _distinct_free_ports(len(spec.functions))
    for (name, fn), port in zip(spec.functions.items(), ports, strict=True):
        procs[name] = subprocess.Popen(
            [FF, "--source", str(spec.source_path(name)), "--target", fn.target, "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "wb"),
        )
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        # Every function is a Python process importing its stack; on 2 busy cores that is a
        # few seconds each, so the allowance grows with the registry.
        deadline = time.monotonic() + 60 + 3 * len(procs)
        for name, url in urls.items():
            while True:
                assert procs[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{name} did not start"
                    time.sleep(0.05)
        # A process that lost its port to another program exits; its URL would then reach
        # the other program, so every process must still be alive once all answer.
        time.sleep(0.5)
        for name, proc in procs.items():
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
        yield urls, {"token": token}
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _post(url: str, message) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers, body = encode_binary(message)
    return httpx.post(url + "/", headers=headers, content=body, timeout=30)


def test_every_function_serves_alone(served, database_url: str) -> None:  # type: ignore[no-untyped-def]
    urls, creds = served
    assert set(urls) == set(load_spec().functions), "a function of serverless.yaml is not covered here"
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as s:
        s.add(Flavor(id="2", name="m1.small", ram=2048, vcpus=1, disk=10))
    auth = {"X-Auth-Token": creds["token"]}

    r = httpx.get(urls["versions_index"] + "/")
    assert r.status_code == 200 and r.json()["versions"][0]["id"] == "v1.0"
    r = httpx.get(urls["versions_show"] + "/v1.0/")
    assert r.status_code == 200 and r.json()["version"]["status"] == "CURRENT"
    r = httpx.get(urls["list_flavors"] + "/v1.0/proj1/flavors", headers=auth)
    assert r.status_code == 200 and [f["str_id"] for f in r.json()["flavors"]] == ["2"]
    r = httpx.get(urls["show_flavor"] + "/v1.0/proj1/flavors/2", headers=auth)
    assert r.status_code == 200 and r.json()["flavor"]["id"] == 2 and r.json()["flavor"]["ram"] == 2048

    # Each selfcheck step, given a run waiting at that step, applies it and replies.
    for step, following in (("ping", "echo"), ("echo", "report"), ("report", None)):
        with sessions.begin() as s:
            run, _ = SELFCHECK.start(s)
            run.step = step
            event = step_message(run, step, 1, "forward")
        r = _post(urls[f"selfcheck_{step}"], event)
        if following is None:
            assert r.status_code == 202
        else:
            assert r.status_code == 200, r.text
            assert decode_http(dict(r.headers), r.content).type == f"troveless.step.selfcheck.{following}"
        with sessions() as s:
            assert step in s.get(WorkflowRun, run.id).completed  # type: ignore[union-attr]

    letter = new_message("troveless.test.lost", "/tests", {"x": 1}, extensions={"knativeerrorcode": "500"})
    assert _post(urls["record_dead_letter"], letter).status_code == 202
    with sessions() as s:
        assert s.execute(select(DeadLetter.event_id)).scalars().all() == [letter.id]

    tick = new_message(ScheduleTick.TYPE, "/apis/v1/namespaces/troveless/pingsources/x", {})
    assert _post(urls["sweep_workflows"], tick).status_code == 202
    assert _post(urls["relay_outbox"], tick).status_code == 202
    sessions.kw["bind"].dispose()
