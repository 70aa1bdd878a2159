"""Runs the database server as a child process, tracks its status, and performs operations.

One operation at a time (prepare, restart, stop, start, or the agent's own crash recovery)
holds the *operation slot*; a second one is refused with `Busy` (HTTP 409), except a repeated
prepare while preparing, which is a no-op. Short SQL commands (databases, users, root) run
only while no operation holds the slot and the server runs (`sql_access`, else NotReady,
HTTP 503); an operation that takes the slot waits (bounded) for the ones in flight to finish
before it touches the server. While no operation runs, a monitor thread watches
the child: if it exits unexpectedly the status becomes CRASHED at once (heartbeat sent
immediately) and the server is restarted with exponential backoff (restart_backoff × 1, 2, 4,
8, 16 s), at most MAX_CRASH_RESTARTS attempts per CRASH_WINDOW_S; past that it gives up and
reports SHUTDOWN with the reason. HEALTHY means a real `SELECT 1` succeeded; a live process
that does not answer is RUNNING.

A backup holds a slot of its own (`begin_backup`): it needs the server running and leaves
SQL commands and crash supervision alone, but while it runs every operation except crash
recovery is refused with Busy. A prepare with `restore` builds the data directory from the
backup chain (backup/restore.py) instead of initdb / install-db / a template.

Like CloudNativePG's instance manager, the agent is the server's parent (no pg_ctl/daemon
mode): it learns about a death from waitpid at once instead of polling a pid file.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from events.base import Event
from events.guest import (
    GuestStatus,
    PrepareRequested,
    ResizeRequested,
    RestoreSpec,
    UpgradeRequested,
)
from guest_agent.backup import engine_for
from guest_agent.backup.restore import restore_data_dir
from guest_agent.datastores.base import (
    Datastore,
    DatastoreError,
    InvalidRequest,
    NotReady,
    new_admin_password,
)
from guest_agent.process import (
    REDACTOR,
    check_traversable,
    describe_exit,
    ensure_dir,
    kill_group,
    kill_helpers,
    spawn_as,
    stop_foreign_server,
)
from guest_agent.settings import Settings
from guest_agent.state import StateStore

log = logging.getLogger(__name__)

MAX_CRASH_RESTARTS = 5
CRASH_WINDOW_S = 300.0
STOP_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
# How long an operation waits for SQL commands in flight before it goes ahead anyway.
SQL_DRAIN_TIMEOUT_S = 30.0


def copy_tree(source: Path, target: Path) -> None:
    """cp -a: keeps owners and modes (the db user owns the files; we run as root)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--sparse=always", f"{source}/.", str(target)], check=True,
                   capture_output=True)


def save_template(data_dir: Path, template: Path) -> None:
    """Copy a freshly initialised data directory aside, published atomically by rename."""
    if (template / ".complete").exists():
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(template.parent, 0o700)
    staging = template.parent / f".{template.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    copy_tree(data_dir, staging)
    (staging / ".complete").touch()
    try:
        staging.rename(template)
    except OSError:  # another agent published it first
        shutil.rmtree(staging, ignore_errors=True)


class Busy(Exception):
    """Another operation holds the slot (HTTP 409)."""


class NotPrepared(Busy):
    """The instance has not been prepared yet (HTTP 409)."""


@dataclass(frozen=True)
class Snapshot:
    status: GuestStatus
    description: str
    server_pid: int | None
    restarts: int
    datastore_version: str | None
    backup_id: str | None = None
    running_version: str | None = None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        datastore: Datastore,
        store: StateStore,
        on_change: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ds = datastore
        self.store = store
        self._on_change = on_change or (lambda snap: None)
        self._lock = threading.RLock()  # status fields and the operation slot
        self._proc_lock = threading.RLock()  # spawning / stopping the child
        self._proc: subprocess.Popen[bytes] | None = None
        self._op: str | None = None
        self._closing = threading.Event()
        self._status = GuestStatus.NEW
        self._description = "agent started; instance not prepared"
        self._restarts = 0
        self._crash_attempts: deque[float] = deque()
        self._monitor: threading.Thread | None = None
        self._sql_users = 0  # SQL commands in flight
        self._sql_idle = threading.Condition(self._lock)
        self._backup_id: str | None = None
        try:
            self._version: str | None = datastore.version()
        except Exception as exc:  # the agent must stay up to report the problem
            log.error("cannot determine the %s version: %s", datastore.name, exc)
            self._version = None

    # ------------------------------------------------------------ status

    def snapshot(self) -> Snapshot:
        with self._lock:
            proc = self._proc
            pid = proc.pid if proc is not None and proc.poll() is None else None
            return Snapshot(self._status, self._description, pid, self._restarts, self._version, self._backup_id,
                            self.store.state.requested_version)

    @property
    def status(self) -> GuestStatus:
        with self._lock:
            return self._status

    @property
    def operation(self) -> str | None:
        with self._lock:
            return self._op

    def _set_status(self, status: GuestStatus, description: str = "", *, final: bool = False) -> None:
        if self._closing.is_set() and not final:
            return  # during shutdown only the final SHUTDOWN counts
        description = REDACTOR.redact(description)
        with self._lock:
            changed = (status, description) != (self._status, self._description)
            self._status, self._description = status, description
            if changed:
                log.info("status %s%s", status.value, f": {description}" if description else "")
                # Under the lock (on_change only enqueues): changes reach the broker in order.
                self._on_change(self.snapshot())

    # ------------------------------------------------------------ boot and shutdown

    def boot(self) -> None:
        """Clean up after a previous agent, restore the desired state, start monitoring."""
        self.store.update(agent_pid=os.getpid())
        if self.store.state.prepared:
            # Same binaries as last time (several majors installed, or after an upgrade).
            try:
                if self.store.state.bin_dir:
                    self.ds.use_binaries(self.store.state.bin_dir)
                else:
                    self.ds.use_version(self.store.state.requested_version)
                self._version = self.ds.version()
            except DatastoreError as exc:
                log.error("the recorded binaries are gone (%s); using %s", exc, self.ds.binaries())
        leftover = self.ds.leftover_server_pid()
        if leftover is not None:
            # Adopting a server we cannot waitpid() would weaken supervision; a clean
            # restart costs a second and guarantees a single server under our control.
            stop_foreign_server(leftover, self.ds.stop_signal, STOP_TIMEOUT_S)
        state = self.store.state
        if state.prepared and state.want_running:
            self._claim("start")
            threading.Thread(target=self._run_op, args=("start", self._do_start), daemon=True).start()
        elif state.prepared:
            self._set_status(GuestStatus.SHUTDOWN, "stopped on request")
        self._monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)
        self._monitor.start()

    def shutdown(self) -> None:
        """SIGTERM/SIGINT: stop the server cleanly (bounded), report SHUTDOWN."""
        self._closing.set()
        kill_helpers()
        self._stop_server()
        self._set_status(GuestStatus.SHUTDOWN, "guest agent stopped", final=True)
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    # ------------------------------------------------------------ operations

    def _claim(self, op: str) -> bool:
        """Take the operation slot; False for a repeated prepare (no-op), Busy otherwise."""
        with self._lock:
            if self._op is not None:
                if op == "prepare" and self._op == "prepare":
                    return False
                raise Busy(f"operation {self._op!r} is in progress; {op!r} refused, retry later")
            if self._backup_id is not None and op != "crash-recovery":
                # Crash recovery still heals the server: the backup tool fails on its own then.
                raise Busy(f"backup {self._backup_id!r} is in progress; {op!r} refused, retry later")
            if op != "prepare" and op != "crash-recovery" and not self.store.state.prepared:
                raise NotPrepared(f"the instance is not prepared; {op!r} refused")
            self._op = op
            return True

    def submit(self, op: str, event: Event | None = None) -> bool:
        """Start an operation in the background. True: started; False: duplicate (no-op)."""
        if self._closing.is_set():
            raise Busy("the guest agent is shutting down")
        overrides = getattr(event, "overrides", None)
        if overrides is not None:
            self.ds.check_overrides(overrides)  # InvalidRequest before anything is claimed

        def converged(action: Callable[[], None]) -> Callable[[], None]:
            # A command that (re)starts the server carries the control plane's overrides.
            def run() -> None:
                if overrides is not None and op != "prepare":
                    self.store.update(overrides=dict(overrides))
                action()
            return run

        actions: dict[str, Callable[[], None]] = {
            "restart": converged(self._do_restart),
            "stop": self._do_stop,
            "start": converged(self._do_start),
        }
        if op == "upgrade":
            assert isinstance(event, UpgradeRequested)
            upgrade = event
            self._check_upgrade(upgrade)  # InvalidRequest (400) before anything is claimed
            actions["upgrade"] = converged(lambda: self._do_upgrade(upgrade))
        if op == "resize":
            assert isinstance(event, ResizeRequested)
            resize = event
            actions["resize"] = converged(lambda: self._do_resize(resize))
        if op == "prepare":
            assert isinstance(event, PrepareRequested)
            # Register passwords before anything can log them.
            REDACTOR.add(u.password for u in event.users)
            action: Callable[[], None] = lambda: self._do_prepare(event)
        else:
            action = actions[op]
        if not self._claim(op):
            return False
        threading.Thread(target=self._run_op, args=(op, action), name=op, daemon=True).start()
        return True

    def begin_backup(self, backup_id: str) -> bool:
        """Take the backup slot. True: taken; False: this backup already runs (no-op).
        Busy (409) for another backup, an operation in progress or an unprepared instance;
        NotReady (503) when the server does not run."""
        with self._lock:
            if self._closing.is_set():
                raise Busy("the guest agent is shutting down")
            if self._backup_id == backup_id:
                return False
            if self._backup_id is not None:
                raise Busy(f"backup {self._backup_id!r} is in progress; backup {backup_id!r} refused")
            if not self.store.state.prepared:
                raise NotPrepared("the instance is not prepared; backup refused")
            if self._op is not None:
                raise Busy(f"operation {self._op!r} is in progress; backup refused, retry later")
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise NotReady(f"the {self.ds.name} server is not running; backup refused")
            self._backup_id = backup_id
            # A heartbeat at once: the control plane sees the backup as the agent's from now on.
            self._on_change(self.snapshot())
            return True

    def end_backup(self, backup_id: str) -> None:
        """Free the backup slot. The caller queued GuestBackupFinished before this, so every
        heartbeat without backup_id reaches the broker after it."""
        with self._lock:
            if self._backup_id == backup_id:
                self._backup_id = None
                self._on_change(self.snapshot())

    def update_overrides(self, overrides: dict[str, Any], restart_required: list[str]) -> tuple[list[str], list[str]]:
        """Make `overrides` the configuration group's settings: persist, rewrite the file,
        apply live. On any failure the previous settings are restored (file and state)."""
        self.ds.check_overrides(overrides)
        with self.sql_access() as ds, self._proc_lock:
            before = replace(self.store.state, overrides=dict(self.store.state.overrides))
            after = self.store.update(overrides=dict(overrides))
            try:
                ds.write_config(after)
                return ds.apply_overrides(before, replace(after), set(restart_required))
            except Exception:
                self.store.update(overrides=before.overrides)
                ds.write_config(self.store.state)
                raise

    @contextmanager
    def sql_access(self) -> Iterator[Datastore]:
        """Use the running server for a short SQL command; NotReady (never waits) if it is not
        prepared, not running, or an operation holds it."""
        with self._lock:
            if self._closing.is_set():
                raise NotReady("the guest agent is shutting down")
            if not self.store.state.prepared:
                raise NotReady("the instance is not prepared")
            if self._op is not None:
                raise NotReady(f"operation {self._op!r} is in progress; retry later")
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise NotReady(f"the {self.ds.name} server is not running")
            self._sql_users += 1
        try:
            yield self.ds
        finally:
            with self._lock:
                self._sql_users -= 1
                self._sql_idle.notify_all()

    def _wait_sql_idle(self, timeout: float = SQL_DRAIN_TIMEOUT_S) -> None:
        with self._lock:
            if not self._sql_idle.wait_for(lambda: self._sql_users == 0, timeout=timeout):
                log.warning("%d SQL command(s) still running after %.0fs; going ahead", self._sql_users, timeout)

    def _run_op(self, op: str, action: Callable[[], None]) -> None:
        try:
            self._wait_sql_idle()  # the slot is ours: no new SQL command starts now
            action()
        except Exception as exc:
            if not self._closing.is_set():
                log.error("%s failed: %s", op, exc, exc_info=not isinstance(exc, RuntimeError))
                if op == "prepare":
                    # A half-prepared server is nobody's to use: stop it, keep FAILED until a
                    # new prepare (which resumes on the initialised data directory).
                    try:
                        self._stop_server()
                    except Exception:
                        log.exception("cannot stop the server after a failed prepare")
                self._set_status(GuestStatus.FAILED, f"{op} failed: {exc}")
        finally:
            with self._lock:
                self._op = None

    def _do_prepare(self, event: PrepareRequested) -> None:
        self._set_status(GuestStatus.BUILDING, "preparing the datastore")
        state = self.store.state
        if state.prepared:
            log.info("already prepared; making sure the server runs")
            self.store.update(want_running=True)
            self._start_server()
            return
        self.ds.check_names(event.databases, event.users)
        self.store.update(
            overrides=dict(event.overrides),
            ram_mb=event.flavor.ram_mb,
            vcpus=event.flavor.vcpus,
            requested_version=event.version,
            volume_size_gb=event.volume_size_gb,
            bin_dir=self.ds.use_version(event.version),
            want_running=True,
            admin_password=state.admin_password
            or (new_admin_password() if self.ds.uses_admin_password else None),
        )
        REDACTOR.add([self.store.state.admin_password])
        self._prepare_dirs()
        if not self.ds.is_initialized():
            # Leftovers of an interrupted prepare were never handed to anyone: start afresh.
            self._stop_server()
            if self.ds.data_dir.exists():
                shutil.rmtree(self.ds.data_dir)
            if event.restore is not None:
                self._restore(event.restore)
            else:
                self._initialize()
        self._start_server(report_healthy=False)
        # A data directory from a template or a backup carries another instance's admin
        # account; it may have come in an earlier attempt that failed after that (so this
        # runs on every first prepare; for our own initdb it rewrites the same password).
        self.ds.after_template_start(self.store.state)
        for database in event.databases:
            self.ds.create_database(self.store.state, database)
        for user in event.users:
            self.ds.create_user(self.store.state, user)
        self._version = self.ds.server_version(self.store.state) or self._version
        self.store.update(prepared=True)
        if self.settings.user_data is not None:
            # The initial passwords are in the server now; the file that carried them goes.
            self.settings.user_data.unlink(missing_ok=True)
        self._set_status(GuestStatus.HEALTHY, "")

    def _restore(self, spec: RestoreSpec) -> None:
        """The data directory from a backup chain, every object verified before the first
        start. Never saved as a template: it holds a tenant's data."""
        self._set_status(GuestStatus.BUILDING, f"restoring from backup {spec.chain[-1].backup_id}")
        restore_data_dir(engine_for(self.ds, self.settings), spec, self._closing.is_set)

    def _initialize(self) -> bool:
        """initdb / install-db, or a copy of the template left by an earlier instance of the
        same engine, version and size. True if the data directory came from a template."""
        state = self.store.state
        template = self.settings.template_dir / self.ds.template_key(state) if self.settings.template_dir else None
        if template is not None and (template / ".complete").exists():
            copy_tree(template, self.ds.data_dir)
            (self.ds.data_dir / ".complete").unlink(missing_ok=True)
            log.info("data directory copied from template %s", template.name)
            return True
        self.ds.initialize(state)
        if template is not None:
            try:
                save_template(self.ds.data_dir, template)
            except OSError as exc:  # a cache: never fail a prepare for it
                log.warning("could not save template %s: %s", template, exc)
        return False

    def _do_resize(self, event: ResizeRequested) -> None:
        """Record the new size; a new flavor takes effect through a restart (write_config
        derives memory and connection settings from it before every start)."""
        changes: dict[str, object] = {}
        if event.volume_size_gb is not None:
            changes["volume_size_gb"] = event.volume_size_gb
        if event.flavor is not None:
            changes.update(ram_mb=event.flavor.ram_mb, vcpus=event.flavor.vcpus)
        self.store.update(**changes)
        if event.flavor is not None:
            self._set_status(GuestStatus.RESTARTING, "restarting for the new flavor")
            self._stop_server()
            self._start_server()
        else:
            self._on_change(self.snapshot())  # report the new volume size at once

    def _check_upgrade(self, event: UpgradeRequested) -> None:
        location = event.location or self.ds.binaries()
        found = self.ds.binaries_version(location)
        current = self._version or self.ds.version()
        if self.ds.major(found) != self.ds.major(current):
            raise InvalidRequest(
                f"{location} holds {self.ds.name} {found}; the data directory is for {current}: "
                "a major version change is not an upgrade this agent performs"
            )

    def _do_upgrade(self, event: UpgradeRequested) -> None:
        """Stop, switch binaries, start; if the new server does not come up, the old
        binaries start again on the same data (the heartbeat then names the old version)."""
        state = self.store.state
        old_location, old_version = self.ds.binaries(), state.requested_version
        new_location = event.location or old_location
        self._set_status(GuestStatus.RESTARTING, f"upgrading to {event.version}")
        self._stop_server()
        self.ds.use_binaries(new_location)
        self.store.update(bin_dir=new_location, requested_version=event.version)
        try:
            self._start_server()
        except Exception as exc:
            log.error("the server did not start on %s (%s): going back to %s", new_location, exc, old_location)
            self._stop_server()
            self.ds.use_binaries(old_location)
            self.store.update(bin_dir=old_location, requested_version=old_version)
            self._start_server(report_healthy=False)
            self._version = self.ds.server_version(self.store.state) or self.ds.version()
            self._set_status(GuestStatus.HEALTHY, f"upgrade to {event.version} failed: {exc}")
            return
        self._version = self.ds.server_version(self.store.state) or self.ds.version()
        self._set_status(GuestStatus.HEALTHY, "")

    def _do_restart(self) -> None:
        self._set_status(GuestStatus.RESTARTING, "restarting on request")
        self._stop_server()
        self._start_server()

    def _do_stop(self) -> None:
        self.store.update(want_running=False)
        self._stop_server()
        self._set_status(GuestStatus.SHUTDOWN, "stopped on request")

    def _do_start(self) -> None:
        self.store.update(want_running=True)
        self._crash_attempts.clear()
        self._start_server()

    # ------------------------------------------------------------ the child process

    def _prepare_dirs(self) -> None:
        s = self.settings
        check_traversable(s.instance_dir, self.ds.user)
        ensure_dir(s.volume_dir, 0o700, self.ds.user)
        ensure_dir(s.run_dir, 0o700, self.ds.user)
        ensure_dir(s.log_dir, 0o700)

    def _start_server(self, *, report_healthy: bool = True) -> None:
        """Spawn the server (if not running) and wait until `SELECT 1` works."""
        with self._proc_lock:
            if self._closing.is_set():
                raise RuntimeError("the guest agent is shutting down")
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._prepare_dirs()
                leftover = self.ds.leftover_server_pid()
                if leftover is not None:
                    stop_foreign_server(leftover, self.ds.stop_signal, STOP_TIMEOUT_S)
                self.ds.write_config(self.store.state)
                proc = spawn_as(self.ds.user, self.ds.server_argv(), log_file=self.ds.server_log, cwd=self.settings.volume_dir)
                with self._lock:
                    self._proc = proc
                self.store.update(server_pid=proc.pid)
                log.info("started %s server pid %d", self.ds.name, proc.pid)
                # BUILDING and RESTARTING already say what is going on until HEALTHY.
                if self.status not in (GuestStatus.BUILDING, GuestStatus.RESTARTING):
                    self._set_status(GuestStatus.RUNNING, "server started; waiting for it to answer")
        self.ds.wait_ready(self.store.state, alive=lambda: proc.poll() is None, timeout=READY_TIMEOUT_S)
        if report_healthy:
            self._set_status(GuestStatus.HEALTHY, "")

    def _stop_server(self) -> None:
        """Stop the child cleanly (bounded wait, then SIGKILL) and forget it."""
        with self._proc_lock:
            with self._lock:
                proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                log.info("stopping %s server pid %d", self.ds.name, proc.pid)
                try:
                    proc.send_signal(self.ds.stop_signal)
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("server pid %d did not stop in %.0fs; killing it", proc.pid, STOP_TIMEOUT_S)
                    kill_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Backends or helpers that outlived the server (e.g. after SIGKILL) must go too.
            kill_group(proc.pid, signal.SIGKILL)
            self.store.update(server_pid=None)

    # ------------------------------------------------------------ supervision

    def _monitor_loop(self) -> None:
        last_check = 0.0
        check_every = min(self.settings.heartbeat_interval, 5.0)
        while not self._closing.wait(0.2):
            try:
                with self._lock:
                    if self._op is not None or not self.store.state.prepared:
                        continue  # operations own the process; unprepared servers are not ours to heal
                    proc = self._proc
                if proc is None:
                    continue
                returncode = proc.poll()
                if returncode is not None:
                    self._on_crash(proc, returncode)
                    last_check = time.monotonic()
                    continue
                if time.monotonic() - last_check >= check_every:
                    last_check = time.monotonic()
                    healthy = self.ds.ping(self.store.state)
                    with self._lock:
                        still_current = self._op is None and self._proc is proc
                    if still_current and proc.poll() is None:
                        if healthy:
                            self._set_status(GuestStatus.HEALTHY, "")
                        else:
                            self._set_status(GuestStatus.RUNNING, "server process is up but does not answer queries")
            except Exception:  # the monitor must never die
                log.exception("monitor iteration failed")

    def _on_crash(self, proc: subprocess.Popen[bytes], returncode: int) -> None:
        try:
            if not self._claim("crash-recovery"):
                return
        except Busy:
            return  # an operation just started; it owns the process now
        try:
            with self._lock:
                if self._proc is not proc:
                    return
            kill_group(proc.pid, signal.SIGKILL)  # orphaned backends would block a restart
            reason = f"server pid {proc.pid} {describe_exit(returncode)}"
            log.error("%s", reason)
            self._set_status(GuestStatus.CRASHED, f"{reason}; restarting")
            while not self._closing.is_set():
                now = time.monotonic()
                while self._crash_attempts and now - self._crash_attempts[0] > CRASH_WINDOW_S:
                    self._crash_attempts.popleft()
                if len(self._crash_attempts) >= MAX_CRASH_RESTARTS:
                    with self._lock:
                        self._proc = None
                    self.store.update(server_pid=None)
                    self._set_status(
                        GuestStatus.SHUTDOWN,
                        f"gave up after {MAX_CRASH_RESTARTS} restarts within {CRASH_WINDOW_S:.0f}s; last: {reason}",
                    )
                    return
                delay = self.settings.restart_backoff * 2 ** len(self._crash_attempts)
                self._crash_attempts.append(now)
                if self._closing.wait(delay):
                    return
                try:
                    self._start_server(report_healthy=False)
                except Exception as exc:
                    reason = f"restart failed: {exc}"
                    log.error("%s", reason)
                    with self._proc_lock:
                        failed = self._proc
                        if failed is not None:
                            kill_group(failed.pid, signal.SIGKILL)
                            failed.wait()
                    self._set_status(GuestStatus.CRASHED, f"{reason}; retrying")
                    continue
                with self._lock:
                    self._restarts += 1
                log.info("server restarted after a crash (restart #%d)", self._restarts)
                self._set_status(GuestStatus.HEALTHY, "")
                return
        finally:
            with self._lock:
                self._op = None
