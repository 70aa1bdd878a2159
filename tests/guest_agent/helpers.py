"""Helpers for the live guest agent tests: a broker that collects heartbeats, an agent driver.

Each agent gets its own loopback address 127.0.0.<100-250> (checked free on the agent and
database ports), a temporary instance directory under /tmp (mode 0711: the db user must be
able to traverse it, which pytest's 0700 tmp_path parents would not allow), and its own key.
Every process started here is stopped by pid at teardown, and every directory removed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from events.base import Event
from events.envelope import Message, decode_http, encode_binary
from events.guest import AGENT_PORT, GuestHeartbeat, control_source, guest_command_url, guest_source, instance_key
from events.replay import SequenceCounter, format_sequence
from events.signing import Keyring, SigningKey, sign, verify

E = TypeVar("E", bound=Event)
ROOT = Path(__file__).resolve().parents[2]
DB_PORTS = {"postgresql": 5432, "mariadb": 3306}
HEARTBEAT_S = 1.0


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_loopback(db_port: int) -> str:
    for _ in range(100):
        address = f"127.0.0.{random.randint(100, 250)}"
        if port_free(address, AGENT_PORT) and port_free(address, db_port):
            return address
    raise RuntimeError("no free loopback address found")


def accepts_connections(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions `text` (e.g. an instance directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and pid_alive(int(entry.name)):
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


# ------------------------------------------------------------------ broker


@dataclass
class Received:
    at: float
    message: Message


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class Broker:
    """Collects the CloudEvents POSTed to it (binary or structured)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _app(self, environ, start_response):  # type: ignore[no-untyped-def]
        request = Request(environ)
        message = decode_http(dict(request.headers), request.get_data())
        with self._cond:
            self.received.append(Received(time.monotonic(), message))
            self._cond.notify_all()
        return Response(status=202)(environ, start_response)

    def start(self) -> Broker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def heartbeats(self, source: str, since: int = 0) -> list[Received]:
        """Heartbeats only: an agent also posts backup events from the same source."""
        with self._cond:
            return [
                r for r in self.received[since:]
                if r.message.source == source and r.message.type == GuestHeartbeat.TYPE
            ]

    def mark(self) -> int:
        with self._cond:
            return len(self.received)

    def wait_for(
        self, source: str, predicate: Callable[[GuestHeartbeat], bool], *, since: int = 0, timeout: float = 30.0
    ) -> tuple[Received, GuestHeartbeat]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.received[since:]:
                    if item.message.source == source and item.message.type == GuestHeartbeat.TYPE:
                        beat = GuestHeartbeat.model_validate(item.message.data)
                        if predicate(beat):
                            return item, beat
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [r.message.data.get("status") for r in self.received[since:] if r.message.source == source]
                    raise AssertionError(f"no matching heartbeat within {timeout}s; saw {seen}")
                self._cond.wait(remaining)

    def events(self, source: str, cls: type[E], since: int = 0) -> list[tuple[Received, E]]:
        """Every event of one type from `source`, parsed, in arrival order."""
        with self._cond:
            items = [r for r in self.received[since:] if r.message.source == source and r.message.type == cls.TYPE]
        return [(r, cls.model_validate(r.message.data)) for r in items]

    def wait_event(
        self, source: str, cls: type[E], predicate: Callable[[E], bool] = lambda e: True, *,
        since: int = 0, timeout: float = 30.0,
    ) -> tuple[Received, E]:
        """The first event of type `cls` from `source` matching `predicate` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.received[since:]:
                    if item.message.source == source and item.message.type == cls.TYPE:
                        event = cls.model_validate(item.message.data)
                        if predicate(event):
                            return item, event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching {cls.__name__} within {timeout}s")
                self._cond.wait(remaining)


# ------------------------------------------------------------------ agent


@dataclass
class Agent:
    instance_id: str
    datastore: str
    address: str
    root: Path  # temp dir: instance dir + key
    secret: bytes
    broker: Broker
    proc: subprocess.Popen[bytes] | None = None
    counter: SequenceCounter = field(default_factory=SequenceCounter)
    log_path: Path | None = None

    @property
    def instance_dir(self) -> Path:
        return self.root / "inst"

    @property
    def key_file(self) -> Path:
        return self.root / "key"

    @property
    def db_port(self) -> int:
        return DB_PORTS[self.datastore]

    @property
    def source(self) -> str:
        return guest_source(self.instance_id)

    @property
    def url(self) -> str:
        return guest_command_url(self.address)

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Agent:
        """Start the agent; `env` adds to the inherited environment (e.g. S3 credentials)."""
        self.log_path = self.root / f"agent-{time.monotonic_ns()}.log"
        argv = [
            sys.executable, "-m", "guest_agent",
            "--instance-id", self.instance_id,
            "--datastore", self.datastore,
            "--instance-dir", str(self.instance_dir),
            "--address", self.address,
            "--key-file", str(self.key_file),
            "--broker-url", self.broker.url,
            "--heartbeat-interval", str(HEARTBEAT_S),
            "--volume-size-gb", "2",
            *extra,
        ]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})
        self.wait_http()
        return self

    def wait_http(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://{self.address}:{AGENT_PORT}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"agent did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""

    def message(
        self,
        event: Event,
        *,
        key: SigningKey | None = None,
        source: str | None = None,
        sequence: int | None = None,
        signed: bool = True,
    ) -> Message:
        """A command as the control plane sends it; override pieces to forge bad ones."""
        msg = event.to_message(
            source or control_source(self.instance_id),
            subject=self.instance_id,
            extensions={
                "partitionkey": self.instance_id,
                "sequence": format_sequence(sequence if sequence is not None else self.counter.next()),
            },
        )
        return sign(msg, key or instance_key(self.instance_id, self.secret)) if signed else msg

    def post(self, message: Message, timeout: float = 10.0) -> httpx.Response:
        headers, body = encode_binary(message)
        return httpx.post(self.url, headers=headers, content=body, timeout=timeout)

    def send(self, event: Event, **kwargs: object) -> httpx.Response:
        return self.post(self.message(event, **kwargs))  # type: ignore[arg-type]

    def keyring(self) -> Keyring:
        return Keyring([instance_key(self.instance_id, self.secret)])

    def verify(self, message: Message) -> None:
        assert message.source == self.source
        verify(message, self.keyring())

    def state(self) -> dict:  # type: ignore[type-arg]
        import json

        return json.loads((self.instance_dir / "agent.json").read_text())

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def cleanup(self) -> None:
        """Kill by pid whatever is left (agent, then servers on our directory), remove files."""
        try:
            self.terminate(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids_mentioning(str(self.instance_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
