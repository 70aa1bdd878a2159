"""Backup benchmark: a >= 1 GB database backed up through Troveless vs the raw dump tool.

Run from the repository root, as root (the agent's OS user must match for the raw tool's
peer/socket login, as it does for the agent itself):

    .venv/bin/python bench/backup.py [--gb 1.0] [--runs 3] [--datastores postgresql,mariadb]

For each datastore, through a real `troveless up` with the filesystem store:
- fill a database to a small size (--gb / 4) and then to the full size, and at each size
- ours: POST /backups -> COMPLETED (pg_basebackup / mariadb-backup streamed through zstd and
  SHA-256 into the store, plus the control plane's round trips), as MB of database per second;
- baseline: the same tool with the same arguments, alone, writing to /dev/null;
  interleaved round by round, medians, and their ratio (target >= 0.8);
- each both with a warm page cache (CPU-bound: the tool, zstd and the agent share 2 cores)
  and a cold one (dropped before every run: the database is read from disk, as for a
  database larger than memory);
- the guest agent's peak RSS during the backup (VmHWM, reset before it through
  /proc/<pid>/clear_refs) and during a restore into a new instance (the new agent's VmHWM
  at ACTIVE, its whole life so far), at both sizes: the target is <= 150 MB and flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
MB = 1024 * 1024
USER, PASSWORD, DB = "bench", "bench-pass-1", "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout_s: float, what: str, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval_s)


class Platform:
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="troveless-bench-", dir="/tmp"))
        self.data_dir.chmod(0o711)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TROVELESS_")}
        env["TROVELESS_HEARTBEAT_INTERVAL"] = "2"
        env.update({k: v for k, v in os.environ.items() if k.startswith("TROVELESS_GUEST_")})
        self.proc = subprocess.Popen(
            [str(BIN / "troveless"), "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--ingress-port", str(free_port()), "--functions-port", str(free_port()), "--no-selfcheck"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.data_dir / "up.log", "wb"),
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait(self._up, 60, "troveless up")
        tokens = json.loads((self.data_dir / "tokens.json").read_text())
        token = tokens["default"]
        self.url = f"{self.base}/v1.0/{tokens['tokens'][token]['project_id']}"
        self.http = httpx.Client(headers={"X-Auth-Token": token}, timeout=60)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(self.log())
        try:
            return httpx.get(self.base + "/", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return (self.data_dir / "up.log").read_text(errors="replace")[-3000:]

    def instance(self, iid: str) -> dict[str, Any]:
        return self.http.get(f"{self.url}/instances/{iid}").json()["instance"]

    def wait_active(self, iid: str) -> dict[str, Any]:
        def active() -> dict[str, Any] | None:
            inst = self.instance(iid)
            if inst["status"] == "ERROR":
                raise RuntimeError(f"instance ERROR: {inst.get('fault')}\n{self.log()}")
            return inst if inst["status"] == "ACTIVE" and inst["operating_status"] == "HEALTHY" else None

        return wait(active, 900, f"{iid} ACTIVE", 0.1)

    def create(self, kind: str, name: str, backup_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "flavorRef": "3", "volume": {"size": 10}, "datastore": {"type": kind}}
        if backup_id:
            body["restorePoint"] = {"backupRef": backup_id}
        else:
            body["databases"] = [{"name": DB}]
            body["users"] = [{"name": USER, "password": PASSWORD, "databases": [{"name": DB}]}]
        r = self.http.post(f"{self.url}/instances", json={"instance": body})
        r.raise_for_status()
        return self.wait_active(r.json()["instance"]["id"])

    def backup(self, iid: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        r = self.http.post(f"{self.url}/backups", json={"backup": {"name": "bench", "instance": iid}})
        r.raise_for_status()
        bid = r.json()["backup"]["id"]

        def done() -> dict[str, Any] | None:
            b = self.http.get(f"{self.url}/backups/{bid}").json()["backup"]
            if b["status"] == "FAILED":
                raise RuntimeError(f"backup failed: {b.get('fail_reason')}")
            return b if b["status"] == "COMPLETED" else None

        b = wait(done, 3600, "backup COMPLETED", 0.02)
        return time.perf_counter() - started, b

    def delete_backup(self, bid: str) -> None:
        self.http.delete(f"{self.url}/backups/{bid}")

    def delete_instance(self, iid: str) -> None:
        self.http.delete(f"{self.url}/instances/{iid}")
        wait(lambda: self.http.get(f"{self.url}/instances/{iid}").status_code == 404, 120, "delete", 0.2)

    def agent_pid(self, iid: str) -> int:
        return int((self.data_dir / "instances" / iid / "agent.pid").read_text())

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # Guest agents outlive the platform (as servers would): stop any instance a failed
        # run left behind before its data goes.
        from functions.drivers.compute_local import LocalCompute

        instances = self.data_dir / "instances"
        compute = LocalCompute(instances)
        for directory in instances.glob("*") if instances.exists() else []:
            compute.delete_server(directory.name, grace_s=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---- the datastores ------------------------------------------------------------------------


def psql(ip: str, statement: str) -> str:
    done = subprocess.run(["psql", "-h", ip, "-U", USER, "-d", DB, "-v", "ON_ERROR_STOP=1", "-Atc", statement],
                          capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PASSWORD}, check=True)
    return done.stdout.strip()


def mariadb(ip: str, statement: str) -> str:
    done = subprocess.run(["mariadb", "-h", ip, "-u", USER, f"-p{PASSWORD}", "-N", "-e", statement, DB],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


class Postgres:
    kind = "postgresql"

    def __init__(self, ip: str) -> None:
        self.ip = ip
        psql(ip, "CREATE TABLE IF NOT EXISTS filler (id bigint, payload text)")

    def size_mb(self) -> float:
        return int(psql(self.ip, f"SELECT pg_database_size('{DB}')")) / MB

    def grow_to(self, target_mb: float) -> None:
        # About 330 bytes a row on disk: random-ish text that compresses like real rows.
        while self.size_mb() < target_mb:
            missing = target_mb - self.size_mb()
            rows = max(10_000, int(missing * MB / 330) + 1)
            psql(self.ip, f"INSERT INTO filler SELECT g, md5(g::text) || repeat(md5(random()::text), 8) "
                          f"FROM generate_series(1, {rows}) g")

    def raw(self, instance_dir: Path) -> float:
        bin_dir = max(Path("/usr/lib/postgresql").glob("*/bin"))
        argv = [str(bin_dir / "pg_basebackup"), "--host", str(instance_dir / "run"), "--port", "5432",
                "--username", "os_admin", "--no-password", "--pgdata", "-", "--format", "tar",
                "--wal-method", "fetch", "--checkpoint", "fast", "--no-manifest"]
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
        return time.perf_counter() - started


class Maria:
    kind = "mariadb"

    def __init__(self, ip: str) -> None:
        self.ip = ip
        mariadb(ip, "CREATE TABLE IF NOT EXISTS filler (id bigint, payload text) ENGINE=InnoDB")

    def size_mb(self) -> float:
        out = mariadb(self.ip, "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                               f"WHERE table_schema = '{DB}'")
        return int(out) / MB

    def grow_to(self, target_mb: float) -> None:
        while self.size_mb() < target_mb:
            missing = target_mb - self.size_mb()
            rows = max(10_000, min(2_000_000, int(missing * MB / 330) + 1))
            mariadb(self.ip, "INSERT INTO filler SELECT seq, CONCAT(md5(seq), REPEAT(md5(rand()), 8)) "
                             f"FROM seq_1_to_{rows}")
            mariadb(self.ip, "ANALYZE TABLE filler")

    def raw(self, instance_dir: Path) -> float:
        work = Path(tempfile.mkdtemp(prefix="bench-mariabackup-"))
        argv = ["mariadb-backup", f"--defaults-file={instance_dir / 'mariadb.cnf'}", "--backup",
                "--stream=xbstream", "--user=root", f"--socket={instance_dir / 'run' / 'mysqld.sock'}",
                f"--datadir={instance_dir / 'volume' / 'data'}", f"--target-dir={work}", f"--extra-lsndir={work}",
                "--log-copy-interval=50"]
        try:
            started = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
            return time.perf_counter() - started
        finally:
            shutil.rmtree(work, ignore_errors=True)


def drop_page_cache() -> None:
    """Cold runs read the database from disk, as a backup of a database bigger than memory
    does: write dirty pages out, then drop the clean ones (root only)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def measure(platform: Platform, engine: Postgres | Maria, iid: str, runs: int, cold: bool) -> dict[str, Any]:
    size = engine.size_mb()
    ours, raw, rss, backup_id = [], [], [], None
    instance_dir = platform.data_dir / "instances" / iid
    pid = platform.agent_pid(iid)
    for _ in range(runs):
        if cold:
            drop_page_cache()
        raw.append(engine.raw(instance_dir))
        reset_peak(pid)
        if cold:
            drop_page_cache()
        elapsed, b = platform.backup(iid)
        rss.append(peak_rss_mb(pid))
        ours.append(elapsed)
        if backup_id:
            platform.delete_backup(backup_id)
        backup_id = b["id"]
        stored = b["object_size"]
    restored = platform.create(engine.kind, "bench-restore", backup_id)
    restore_rss = peak_rss_mb(platform.agent_pid(restored["id"]))
    platform.delete_instance(restored["id"])
    platform.delete_backup(backup_id)  # type: ignore[arg-type]
    o, r = statistics.median(ours), statistics.median(raw)
    return {"cache": "cold" if cold else "warm", "size_mb": size, "ours_s": o, "raw_s": r,
            "ours_mbps": size / o, "raw_mbps": size / r, "ratio": r / o, "backup_rss_mb": max(rss), "restore_rss_mb": restore_rss, "stored_mb": stored / MB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size at the big step (>= 1 for the target)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--datastores", default="postgresql,mariadb")
    args = parser.parse_args()
    platform = Platform()
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        for kind in [d for d in args.datastores.split(",") if d]:
            inst = platform.create(kind, f"bench-{kind}")
            engine: Postgres | Maria = Postgres(inst["ip"][0]) if kind == "postgresql" else Maria(inst["ip"][0])
            for target in (args.gb * 1024 / 4, args.gb * 1024):
                print(f"{kind}: filling to {target:.0f} MB ...", flush=True)
                engine.grow_to(target)
                for cold in (False, True):
                    result = measure(platform, engine, inst["id"], args.runs, cold)
                    results.append((kind, result))
                    print(f"{kind} {result['size_mb']:.0f} MB {result['cache']}: ours {result['ours_s']:.2f}s "
                          f"({result['ours_mbps']:.0f} MB/s), raw tool to /dev/null {result['raw_s']:.2f}s "
                          f"({result['raw_mbps']:.0f} MB/s), ratio {result['ratio']:.2f}; guest peak RSS "
                          f"backup {result['backup_rss_mb']:.0f} MB, restore {result['restore_rss_mb']:.0f} MB",
                          flush=True)
            platform.delete_instance(inst["id"])
    finally:
        platform.close()
    print()
    print(f"{'datastore':<12}{'cache':>6}{'db MB':>8}{'stored MB':>11}{'ours MB/s':>11}{'raw MB/s':>10}{'ratio':>7}"
          f"{'RSS backup':>12}{'RSS restore':>13}")
    for kind, r in results:
        print(f"{kind:<12}{r['cache']:>6}{r['size_mb']:>8.0f}{r['stored_mb']:>11.0f}{r['ours_mbps']:>11.0f}{r['raw_mbps']:>10.0f}"
              f"{r['ratio']:>7.2f}{r['backup_rss_mb']:>10.0f}MB{r['restore_rss_mb']:>11.0f}MB")
    print("targets: ratio >= 0.8 (throughput ours / raw tool to /dev/null, medians of interleaved runs); "
          "guest peak RSS <= 150 MB and flat across sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
