"""A real `troveless up` in a subprocess, and the unmodified `openstack` client against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.infra.platform_helpers import wait_for

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traversable_tmpdir(prefix: str) -> Path:
    """Database servers run as an unprivileged user who must reach the instance data:
    pytest's tmp_path lives under a 0700 directory, so use one of our own under /tmp."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)
    return path


class LocalPlatform:
    def __init__(self, database_url: str, *, heartbeat_s: float = 1.0, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = traversable_tmpdir("troveless-e2e-")
        self.database_url = database_url
        self.port = free_port()
        self.ingress_port = free_port()
        self.functions_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TROVELESS_", "OS_", "K_SINK"))}
        self.env.update({"TROVELESS_DATABASE_URL": database_url, "TROVELESS_HEARTBEAT_INTERVAL": str(heartbeat_s)})
        # The tests poll every 50-200 ms, far above Trove's 200 requests a minute per project.
        self.env.update({"TROVELESS_HTTP_GET_RATE": "6000", "TROVELESS_HTTP_POST_RATE": "6000",
                         "TROVELESS_HTTP_DELETE_RATE": "6000", "TROVELESS_HTTP_PUT_RATE": "6000"})
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "up.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "troveless"), "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--ingress-port", str(self.ingress_port), "--functions-port", str(self.functions_port),
             "--no-selfcheck"],
            env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )

        def serving() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.base + "/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(serving, timeout_s=60, what="troveless up")
        if self.env.get("TROVELESS_AUTH") == "keystone":
            return  # no local token: Keystone issues them (tests/e2e/test_keystone.py)
        tokens = json.loads((self.data_dir / "tokens.json").read_text())
        self.token = tokens["default"]
        self.project = tokens["tokens"][self.token]["project_id"]

    def kill(self) -> None:
        """SIGKILL the platform (its guest agents live on, as servers would)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    # ---- clients ------------------------------------------------------------------------

    def osc(self, *args: str, check: bool = True) -> Any:
        """Run `openstack ... database ...` unmodified; parse JSON output when asked (-f json)."""
        argv = [str(BIN / "openstack"), "--os-auth-type", "admin_token",
                "--os-endpoint", f"{self.base}/v1.0/{self.project}", f"--os-token={self.token}", *args]  # a token may start with "-"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=self.env)
        if check:
            assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}\n{self.log()}"
        if "-f" in args and "json" in args and done.returncode == 0:
            return json.loads(done.stdout)
        return done

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}/v1.0/{self.project}{path}",
                             headers={"X-Auth-Token": self.token}, timeout=30, **kw)

    def show(self, instance_id: str) -> dict[str, Any] | None:
        r = self.api("GET", f"/instances/{instance_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return r.json()["instance"]

    def wait_status(self, instance_id: str, status: str, operating: str | None = None, timeout_s: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            inst = self.show(instance_id)
            assert inst is not None, "instance vanished"
            if inst["status"] == "ERROR" and status != "ERROR":
                raise AssertionError(f"instance went to ERROR: {inst.get('fault')}\n{self.log()}")
            if inst["status"] == status and (operating is None or inst["operating_status"] == operating):
                return inst
            return None

        try:
            return wait_for(reached, timeout_s=timeout_s, interval_s=0.2, what=f"{instance_id} {status}/{operating}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(instance_id)}") from None

    def diagnose(self, instance_id: str) -> str:
        """What a timed-out wait needs to be understood after the fact: the instance as the
        API shows it, the platform's log and the guest agent's log (tails)."""
        parts = [f"instance: {self.show(instance_id)}", f"platform log:\n{self.log()[-6000:]}"]
        agent_log = self.data_dir / "instances" / instance_id / "logs" / "agent.log"
        if agent_log.exists():
            parts.append(f"agent log:\n{agent_log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def cleanup(self) -> None:
        self.stop()
        # Any instance left behind by a failed test: stop its processes before removing data.
        from functions.drivers.compute_local import LocalCompute

        compute = LocalCompute(self.data_dir / "instances")
        for directory in (self.data_dir / "instances").glob("*") if (self.data_dir / "instances").exists() else []:
            try:
                compute.delete_server(directory.name, grace_s=10)
            except Exception:  # noqa: BLE001 - best effort in teardown
                pass
        shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_gone(pid: int, timeout_s: float = 20) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
        except OSError:
            return True

    wait_for(gone, timeout_s=timeout_s, what=f"process {pid} to exit")


def listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def wait_until(predicate, timeout_s: float = 30, what: str = "") -> None:  # type: ignore[no-untyped-def]
    wait_for(predicate, timeout_s=timeout_s, interval_s=0.1, what=what)
    time.sleep(0)


def sql(kind: str, ip: str, user: str, password: str, database: str, statement: str) -> subprocess.CompletedProcess[str]:
    """Run a statement with the datastore's own command-line client, over TCP."""
    if kind == "postgresql":
        argv = ["psql", "-h", ip, "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", statement]
        env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    else:
        argv = ["mariadb", "-h", ip, "-P", "3306", "-u", user, f"-p{password}", "--connect-timeout=5", "-N", "-e",
                statement, *([database] if database else [])]
        env = dict(os.environ)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
