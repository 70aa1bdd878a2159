"""Provisioning benchmark: POST /instances -> ACTIVE, against the raw server bootstrap.

Run from the repository root (as root or as a user who may run the servers):

    .venv/bin/python bench/provision.py [--runs 5] [--datastores postgresql,mariadb]

For each datastore, interleaved round by round so a slow moment of the machine hits both:
- ours: time from POST /v1.0/{project}/instances until GET shows status ACTIVE, through a
  real `troveless up` (broker, step functions, guest agent, conductor), then the instance
  is deleted;
- baseline: the raw bootstrap alone, by hand: initdb + postgres (or mariadb-install-db +
  mariadbd) as the unprivileged user, until the server accepts a connection.
Prints the medians and their ratio (target: <= 1.25; the product goal is 1.10), and the
first (cold) provisioning apart: it runs initdb / install-db itself and leaves the
initialised data directory as a template that later instances of the same engine, version
and flavor copy instead of initialising again.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def accepts(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


# ---- baseline: the raw bootstrap ---------------------------------------------------------


def _demote(user: str):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def raw_postgresql(workdir: Path, address: str) -> float:
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    data, run = workdir / "data", workdir / "run"
    run.mkdir()
    ids = _demote("postgres")
    if ids:
        shutil.chown(workdir, ids["user"], ids["group"])
        shutil.chown(run, ids["user"], ids["group"])
    started = time.perf_counter()
    subprocess.run([f"{bindir}/initdb", "-D", str(data), "-U", "os_admin", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, **ids)
    server = subprocess.Popen([f"{bindir}/postgres", "-D", str(data), "-c", f"listen_addresses={address}",
                               "-c", f"unix_socket_directories={run}", "-p", "5432"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **ids)
    try:
        wait(lambda: subprocess.run([f"{bindir}/pg_isready", "-q", "-h", address, "-p", "5432"]).returncode == 0,
             60, "postgres")
        return time.perf_counter() - started
    finally:
        _stop(server, signal.SIGINT)


def raw_mariadb(workdir: Path, address: str) -> float:
    data, run = workdir / "data", workdir / "run"
    run.mkdir()
    ids = _demote("mysql")
    if ids:
        shutil.chown(workdir, ids["user"], ids["group"])
        shutil.chown(run, ids["user"], ids["group"])
    user = ["--user=mysql"] if ids else []
    started = time.perf_counter()
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *user,
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)
    server = subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", *user,
                               f"--bind-address={address}", "--port=3306", f"--socket={run}/mysqld.sock",
                               f"--pid-file={run}/mysqld.pid", "--skip-name-resolve"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: accepts(address, 3306), 60, "mariadbd")
        return time.perf_counter() - started
    finally:
        _stop(server, signal.SIGTERM)


def _stop(server: subprocess.Popen[bytes], sig: int) -> None:
    """The measurement is taken; stop the server, forcefully if it lingers."""
    server.send_signal(sig)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


RAW = {"postgresql": raw_postgresql, "mariadb": raw_mariadb}


# ---- ours: the whole platform --------------------------------------------------------------


class Platform:
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="troveless-bench-", dir="/tmp"))
        self.data_dir.chmod(0o711)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TROVELESS_")}
        self.proc = subprocess.Popen(
            [str(BIN / "troveless"), "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--ingress-port", str(free_port()), "--functions-port", str(free_port()), "--no-selfcheck"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.data_dir / "up.log", "wb"),
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait(self._up, 60, "troveless up")
        tokens = json.loads((self.data_dir / "tokens.json").read_text())
        self.token = tokens["default"]
        self.url = f"{self.base}/v1.0/{tokens['tokens'][self.token]['project_id']}"
        self.http = httpx.Client(headers={"X-Auth-Token": self.token}, timeout=30)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError((self.data_dir / "up.log").read_text()[-3000:])
        try:
            return httpx.get(self.base + "/", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def provision(self, datastore: str) -> float:
        body = {"instance": {"name": f"bench-{datastore}", "flavorRef": "2", "volume": {"size": 1},
                             "datastore": {"type": datastore}}}
        started = time.perf_counter()
        response = self.http.post(f"{self.url}/instances", json=body)
        response.raise_for_status()
        instance_id = response.json()["instance"]["id"]
        status = ""

        def active() -> bool:
            nonlocal status
            status = self.http.get(f"{self.url}/instances/{instance_id}").json()["instance"]["status"]
            if status == "ERROR":
                raise RuntimeError(f"instance went to ERROR:\n{(self.data_dir / 'up.log').read_text()[-3000:]}")
            return status == "ACTIVE"

        wait(active, 300, f"{datastore} ACTIVE")
        elapsed = time.perf_counter() - started
        self.http.delete(f"{self.url}/instances/{instance_id}")
        wait(lambda: self.http.get(f"{self.url}/instances/{instance_id}").status_code == 404, 120, "delete")
        return elapsed

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def free_address() -> str:
    for last in range(200, 250):
        address = f"127.0.1.{last}"
        if not accepts(address, 5432) and not accepts(address, 3306):
            return address
    raise RuntimeError("no free loopback address")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datastores", default="postgresql,mariadb")
    args = parser.parse_args()
    datastores = [d for d in args.datastores.split(",") if d]
    ours: dict[str, list[float]] = {d: [] for d in datastores}
    raw: dict[str, list[float]] = {d: [] for d in datastores}
    platform = Platform()
    try:
        for round_no in range(args.runs):
            for datastore in datastores:
                workdir = Path(tempfile.mkdtemp(prefix="troveless-raw-", dir="/tmp"))
                workdir.chmod(0o711)
                try:
                    raw[datastore].append(RAW[datastore](workdir, free_address()))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                ours[datastore].append(platform.provision(datastore))
                print(f"round {round_no + 1}/{args.runs} {datastore}: POST->ACTIVE {ours[datastore][-1]:.2f}s, "
                      f"raw bootstrap {raw[datastore][-1]:.2f}s", flush=True)
    finally:
        platform.close()
    print()
    print(f"{'datastore':<12}{'POST->ACTIVE (median)':>24}{'raw bootstrap (median)':>25}{'ratio':>8}"
          f"{'cold first POST->ACTIVE':>26}")
    for datastore in datastores:
        a, b = statistics.median(ours[datastore]), statistics.median(raw[datastore])
        cold = ours[datastore][0]
        print(f"{datastore:<12}{a:>23.2f}s{b:>24.2f}s{a / b:>7.2f}x{cold:>24.2f}s ({cold / b:.2f}x)")
    print("target: ratio <= 1.25 (product goal 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
