"""Running things as the database's OS user, process helpers, and secret redaction in logs.

Database servers never run as root: when the agent is root, every server and init tool is
started through subprocess's own `user=`/`group=`/`extra_groups=` (setuid happens in the child
between fork and exec, so the server never holds root, not even briefly after exec), with a
clean environment and umask 077. When the agent is not root, the server runs as the agent's
own user and no privilege change happens.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DB_USERS = {"postgresql": "postgres", "mariadb": "mysql"}


class ProcessError(RuntimeError):
    """A helper command failed or a process could not be managed."""


@dataclass(frozen=True)
class DbUser:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @property
    def needs_switch(self) -> bool:
        """True when the agent (root) must change identity to run as this user."""
        return os.geteuid() != self.uid


def running_as_root() -> bool:
    return os.geteuid() == 0


def agent_os_user() -> str:
    """The agent's own OS user name (what peer / unix_socket authentication sees)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def agent_user() -> DbUser:
    """The agent's own identity, for tools that must authenticate as the agent (peer /
    unix_socket) rather than as the db user."""
    entry = pwd.getpwuid(os.geteuid())
    return DbUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, tuple(os.getgroups()))


def resolve_db_user(datastore: str, requested: str | None) -> DbUser:
    """The OS user that runs the server: explicit, else postgres/mysql as root, else ourselves."""
    if requested:
        name = requested
    elif running_as_root():
        name = DEFAULT_DB_USERS[datastore]
    else:
        name = agent_os_user()
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise ProcessError(f"OS user {name!r} for the database server does not exist") from exc
    if entry.pw_uid == 0:
        raise ProcessError("refusing to run the database server as root; use --db-user")
    if entry.pw_uid != os.geteuid() and not running_as_root():
        raise ProcessError(f"only root can run the database as another user ({name!r})")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return DbUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups)


def server_env(user: DbUser, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing of the agent's (no TROVELESS_* settings) leaks in."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": user.home if os.path.isdir(user.home) else "/",
        "USER": user.name,
        "LOGNAME": user.name,
    }
    env.update(extra or {})
    return env


def _identity_kwargs(user: DbUser) -> dict[str, object]:
    # resolve_db_user already refuses root; the guard stays next to every spawn anyway.
    if user.uid == 0 or user.gid == 0:
        raise ProcessError("refusing to start a database process as root")
    if not user.needs_switch:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}


# Helper processes (initdb, install-db) currently running: killed if the agent shuts down.
_helpers: set[subprocess.Popen[bytes]] = set()
_helpers_lock = threading.Lock()


def run_as(
    user: DbUser,
    argv: Sequence[str],
    *,
    log_file: Path | None = None,
    timeout: float = 300.0,
    cwd: Path | None = None,
    redactor: Redactor | None = None,
) -> str:
    """Run a helper as the db user; returns its output, raises ProcessError (output attached)."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=server_env(user),
        cwd=str(cwd) if cwd else "/",
        umask=0o077,
        start_new_session=True,
        **_identity_kwargs(user),  # type: ignore[arg-type]
    )
    with _helpers_lock:
        _helpers.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise ProcessError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from None
    finally:
        with _helpers_lock:
            _helpers.discard(proc)
    text = out.decode(errors="replace")
    if redactor is not None:
        text = redactor.redact(text)
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(argv)}\n{text}\n")
    if proc.returncode != 0:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise ProcessError(f"{Path(argv[0]).name} exited with {proc.returncode}: {tail}")
    return text


def spawn_as(user: DbUser, argv: Sequence[str], *, log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a long-running server as a child of the agent, in its own process group.

    Own session/process group: a terminal's Ctrl-C does not hit the server behind the agent's
    back, and after a crash the agent can kill leftover children (PostgreSQL backends) with
    one killpg. Output goes to a log file the agent opened, so the server needs no write
    access to the log directory.
    """
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(user),
            cwd=str(cwd),
            umask=0o077,
            start_new_session=True,
            **_identity_kwargs(user),  # type: ignore[arg-type]
        )


# Linux's default pipe holds 64 KiB: a 1 GB backup then costs ~16,000 reader wake-ups per
# GB on each side, and the pipe, not the tool or zstd, caps throughput (measured here:
# 640 MB/s with the default, 1,220 MB/s with 1 MiB, for the same tool -> zstd -> store path).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ names it; spelled out for clarity)


def _widen_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size for unprivileged agents: keep the default
        pass


@contextmanager
def helper_process(
    argv: Sequence[str],
    *,
    user: DbUser | None,
    log_file: Path,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A streaming helper (a backup tool writing to stdout, mbstream reading stdin).

    It runs as `user` (None: as the agent itself, for tools that log in as the agent's admin
    account), in its own process group with a clean environment, stderr appended to
    `log_file` (these tools print a line per file: never into a pipe nobody reads). It is
    registered like run_as helpers, so an agent shutdown kills it; leaving the block kills
    the group if it still runs and always reaps it, so no zombie or orphan survives.
    """
    identity = agent_user() if user is None else user
    with open(log_file, "ab") as err:
        err.write(f"$ {' '.join(argv)}\n".encode())
        err.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=err,
            env=server_env(identity),
            cwd=str(cwd) if cwd else "/",
            umask=0o077,
            start_new_session=True,
            **({} if user is None else _identity_kwargs(user)),  # type: ignore[arg-type]
        )
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            _widen_pipe(pipe.fileno())
    with _helpers_lock:
        _helpers.add(proc)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            # Not reaped yet, so the pid (and the group id) cannot have been reused: kill
            # the tool if it still runs and any child it left in its group, then reap it.
            kill_group(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # a dead reader: the unflushed bytes do not matter any more
                    pass
        proc.wait()
        with _helpers_lock:
            _helpers.discard(proc)


def kill_helpers() -> None:
    with _helpers_lock:
        helpers = list(_helpers)
    for proc in helpers:
        kill_group(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------- pids and /proc


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return False


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_uid(pid: int) -> int | None:
    """Real uid of a process, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid` (our servers are session leaders)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_foreign_server(pid: int, sig: int, timeout: float) -> None:
    """Stop a server we did not start (left by a previous agent): signal, wait, then SIGKILL."""
    log.warning("stopping server pid %d left by a previous agent", pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not wait_pid_gone(pid, timeout):
        log.warning("server pid %d ignored signal %d; killing it", pid, sig)
        kill_group(pid, signal.SIGKILL)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_pid_gone(pid, 5.0)


# ---------------------------------------------------------------- files


def ensure_dir(path: Path, mode: int, owner: DbUser | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None and running_as_root():
        os.chown(path, owner.uid, owner.gid)


def chown_tree(path: Path, owner: DbUser) -> None:
    if not running_as_root():
        return
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), owner.uid, owner.gid, follow_symlinks=False)


def check_traversable(path: Path, user: DbUser) -> None:
    """Fail early and clearly if the db user cannot reach `path` (e.g. a 0700 parent dir)."""
    if user.uid == os.geteuid():
        return
    current = Path("/")
    for part in path.resolve().parts[1:]:
        current = current / part
        st = current.stat()
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in user.groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise ProcessError(
                f"OS user {user.name!r} cannot traverse {current} (mode {st.st_mode & 0o777:04o}); "
                "the instance directory must be reachable by the database user"
            )


def write_private(path: Path, text: str, owner: DbUser | None = None, mode: int = 0o600) -> None:
    """Write a file atomically with `mode` from the start (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None and running_as_root():
            os.fchown(fd, owner.uid, owner.gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def tree_size(path: Path) -> int:
    """Apparent size in bytes of all regular files under `path` (the volume's usage)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # files come and go (WAL segments, temp files)
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


# ---------------------------------------------------------------- redaction


class Redactor(logging.Filter):
    """Replaces known secrets (passwords) with *** in log records and tool output.

    Secrets are registered as they become known (admin password, users' passwords from a
    prepare request); the filter is attached to the root handler so no module can leak them.
    """

    MASK = "***"

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            # Very short strings would mask innocent text; passwords shorter than 4 are refused
            # by nobody, but masking "a" everywhere would destroy the logs.
            self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, self.MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            # Exception texts (driver errors quoting SQL) are redacted through exc_text.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redact(formatted)
            record.exc_info = None
        return True


REDACTOR = Redactor()
