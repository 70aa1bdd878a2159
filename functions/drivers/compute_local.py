"""The `local` compute driver (embedded default): a "server" is a guest agent process on this
machine, a "volume" is a directory with a size limit, and each instance gets its own
loopback IPv4 address so its database listens on the standard port (5432 / 3306).

Every operation is idempotent and keyed by the instance id (find before create), so a
retried step never starts a second server. Processes are found again from pid files, so
servers survive a platform restart. The driver only ever signals processes it started,
identified by their pid file and checked against /proc before any signal.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from functions.core.ports import ComputeError, ServerSpec

log = logging.getLogger("troveless.compute.local")

# Environment variables of the platform that guest agents must not inherit.
_PLATFORM_SECRETS = frozenset({"TROVELESS_KEYSTONE_PASSWORD"})

STANDARD_PORTS = {"postgresql": 5432, "mariadb": 3306, "mysql": 3306}
AGENT_PORT = 8799
# 127.0.0.1 often hosts the machine's own servers; instances start at .2 and go up.
FIRST_ADDRESS = ipaddress.IPv4Address("127.0.0.2")
LAST_ADDRESS = ipaddress.IPv4Address("127.0.255.254")
# Volume and server ids are derived from the instance id: the same instance always gets the
# same ones, which is what makes a retried step find instead of create.
_VOLUMES = uuid.UUID("6f1d8a8e-5b0e-4c59-9d57-9b1f4d1e0a01")
_SERVERS = uuid.UUID("6f1d8a8e-5b0e-4c59-9d57-9b1f4d1e0a02")





class LocalCompute:
    def __init__(self, root: Path, *, python: str = sys.executable, heartbeat_interval_s: float = 5.0) -> None:
        self.root = Path(root)
        self.python = python
        self.heartbeat_interval_s = heartbeat_interval_s

    # ---- layout -------------------------------------------------------------------------

    def instance_dir(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise ComputeError(f"bad instance id {instance_id!r}", transient=False)
        return self.root / instance_id

    # ---- addresses ----------------------------------------------------------------------

    def pick_address(self, taken: set[str], datastore: str) -> str:
        """The lowest loopback address that no instance holds and where nothing listens."""
        ports = (STANDARD_PORTS.get(datastore, 5432), AGENT_PORT)
        address = FIRST_ADDRESS
        while address <= LAST_ADDRESS:
            text = str(address)
            if text not in taken and all(_bindable(text, port) for port in ports):
                return text
            address += 1
        raise ComputeError("no free loopback address left", transient=False)

    # ---- volumes ------------------------------------------------------------------------

    def allocate_volume(self, instance_id: str, size_gb: int) -> str:
        """Create the instance's volume directory (idempotent); returns the volume id."""
        directory = self.instance_dir(instance_id)
        volume = directory / "volume"
        volume.mkdir(parents=True, exist_ok=True)
        # The database runs as an unprivileged user: it must be able to reach its data dir.
        os.chmod(directory, 0o711)
        _ensure_traversable(self.root)
        (directory / "volume.json").write_text(json.dumps({"size_gb": size_gb}))
        return str(uuid.uuid5(_VOLUMES, instance_id))

    def resize_volume(self, instance_id: str, size_gb: int) -> None:
        """Record the new size. A local volume is a directory with no quota of its own (the
        size is what the guest reports and the API enforces), so there is nothing to grow;
        idempotent like every step's side effect."""
        directory = self.instance_dir(instance_id)
        if not (directory / "volume").is_dir():
            raise ComputeError(f"instance {instance_id} has no volume", transient=False)
        (directory / "volume.json").write_text(json.dumps({"size_gb": size_gb}))

    def delete_volume(self, instance_id: str) -> None:
        directory = self.instance_dir(instance_id)
        if self.server_running(instance_id):
            raise ComputeError(f"server of {instance_id} still runs; volume kept")
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            raise ComputeError(f"could not remove {directory}")

    def volume_exists(self, instance_id: str) -> bool:
        return (self.instance_dir(instance_id) / "volume").is_dir()

    def volume_ready(self, instance_id: str) -> bool:
        """A local volume is ready as soon as it exists."""
        return self.volume_exists(instance_id)

    # ---- servers ------------------------------------------------------------------------

    def create_server(self, spec: ServerSpec) -> str:
        """Start the instance's guest agent unless it already runs; returns the server id."""
        directory = self.instance_dir(spec.instance_id)
        if not (directory / "volume").is_dir():
            raise ComputeError(f"volume of {spec.instance_id} does not exist", transient=False)
        server_id = str(uuid.uuid5(_SERVERS, spec.instance_id))
        if self.server_running(spec.instance_id):
            return server_id
        key_file = directory / "guest.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(spec.key)
        extra: list[str] = []
        if spec.user_data is not None:
            user_data = directory / "user-data.json"
            fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(spec.user_data)
            extra = ["--user-data", str(user_data)]
        argv = [
            self.python, "-m", "guest_agent",
            "--instance-id", spec.instance_id,
            "--datastore", "mariadb" if spec.datastore == "mysql" else spec.datastore,
            "--instance-dir", str(directory),
            "--address", spec.address,
            "--key-file", str(key_file),
            "--broker-url", spec.broker_url,
            "--volume-size-gb", str(spec.volume_size_gb),
            "--heartbeat-interval", str(self.heartbeat_interval_s),
            # Shared cache of initialised data directories (one per engine/version/size).
            "--template-dir", str(self.root.parent / "templates"),
            *extra,
        ]
        logfile = open(directory / "agent.log", "ab")
        try:
            process = subprocess.Popen(
                argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                # The platform's own secrets stay with the platform (a guest is another machine).
                env={k: v for k, v in os.environ.items() if k not in _PLATFORM_SECRETS},
                start_new_session=True,  # not in the platform's process group: Ctrl-C there spares it
            )
        except OSError as exc:
            raise ComputeError(f"cannot start the guest agent: {exc}") from exc
        finally:
            logfile.close()
        (directory / "agent.pid").write_text(str(process.pid))
        # Reap it when it exits while we live; if we die first, init adopts it.
        threading.Thread(target=process.wait, name=f"reap-{spec.instance_id[:8]}", daemon=True).start()
        log.info("started guest agent for %s at %s (pid %d)", spec.instance_id, spec.address, process.pid)
        return server_id

    def _pids(self, instance_id: str) -> list[int]:
        """Our processes for this instance: the agent, and everything in its session.

        The agent is started as a session leader, so what runs in its session keeps the
        agent's pid as its session id, even after the agent died; Linux does not reuse a pid
        that is still a session id. The agent starts its helpers (the database server,
        initdb, backup tools) in sessions of their own, though: those are found by the pids
        it recorded and, for a helper it had no time to record (an agent killed during
        initdb), by naming this instance's directory on their command line. Every candidate
        is checked against /proc before anything is signalled."""
        directory = self.instance_dir(instance_id)
        pids: list[int] = []
        agent = _read_pid(directory / "agent.pid")
        if agent:
            if process_alive(agent) and _is_ours(agent, directory):
                pids.append(agent)
            pids += _session_members(agent)
        state = directory / "agent.json"
        try:
            server = json.loads(state.read_text()).get("server_pid")
        except (OSError, ValueError):
            server = None
        if isinstance(server, int):
            pids.append(server)
        if (directory / "run").is_dir():
            pids += [p for p in map(_read_pid, (directory / "run").glob("*.pid")) if p]
        if (directory / "volume").is_dir():
            pids += [p for p in map(_read_pid, (directory / "volume").rglob("postmaster.pid")) if p]
        pids += _mentioning(directory)
        agent_session = set(_session_members(agent)) if agent else set()
        return [
            p for p in dict.fromkeys(pids)
            if process_alive(p) and (p in agent_session or _is_ours(p, directory))
        ]

    def server_running(self, instance_id: str) -> bool:
        return bool(self._pids(instance_id))

    def server_status(self, instance_id: str) -> str | None:
        """ACTIVE while the agent's processes run (a local server has no BUILD phase)."""
        return "ACTIVE" if self.server_running(instance_id) else None

    def resize_server(self, instance_id: str, flavor_id: str) -> bool:
        """Done at once: a local server has no flavor (the guest applies the new memory
        settings when the resize workflow sends it ResizeRequested)."""
        return True

    def delete_server(self, instance_id: str, *, grace_s: float = 20.0) -> None:
        """Stop the agent (it stops its database cleanly), then anything left. Idempotent."""
        pids = self._pids(instance_id)
        if not pids:
            return
        for pid in pids[:1]:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._pids(instance_id):
            time.sleep(0.1)
        for pid in self._pids(instance_id):
            log.warning("killing leftover process %d of %s", pid, instance_id)
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._pids(instance_id):
            time.sleep(0.05)
        if self._pids(instance_id):
            raise ComputeError(f"processes of {instance_id} survive SIGKILL")


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _is_ours(pid: int, directory: Path) -> bool:
    """Only signal a process whose command line or working directory names this instance
    (pid files can be stale and pids get reused)."""
    needle = str(directory)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if needle in cmdline:
            return True
        return os.readlink(f"/proc/{pid}/cwd").startswith(needle)
    except OSError:
        return False


def _mentioning(directory: Path) -> list[int]:
    """Live processes whose command line names this instance's directory (its own)."""
    needle = str(directory).encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return [p for p in found if p != os.getpid()]


def _session_members(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (field 6 of /proc/<pid>/stat)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _ensure_traversable(path: Path) -> None:
    """Database servers run as an unprivileged user: every parent must be searchable."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ComputeError(
                f"{parent} is not searchable by other users, so the unprivileged database user "
                "cannot reach instance data below it; use a data directory outside it "
                "(as root the default is /var/lib/troveless)",
                transient=False,
            )
