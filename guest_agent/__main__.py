"""`python -m guest_agent`: one long-lived agent per database instance.

Startup order: settings and key (exit 2 if unusable), pid file (refuse a second agent on the
same directory), command server (so the control plane can reach us at once), heartbeats,
then the supervisor (which cleans up after a previous agent and restores the desired state).
SIGTERM/SIGINT stop a running backup (reported failed), stop the database server cleanly and
exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from events.publisher import HttpPublisher
from guest_agent.backup import engine_for
from guest_agent.backup.runner import BackupRunner
from guest_agent.datastores import REGISTRY, DatastoreError
from guest_agent.heartbeat import DatastoreStats, EventFactory, Heartbeater
from guest_agent.memory import fix_mmap_threshold
from guest_agent.process import REDACTOR, ProcessError, pid_alive, process_cmdline, resolve_db_user, write_private
from guest_agent.server import CommandApp, run_user_data, serve
from guest_agent.settings import Settings, SettingsError, parse_settings
from guest_agent.state import StateStore
from guest_agent.supervisor import Supervisor

log = logging.getLogger("guest_agent")


def _setup_logging(settings: Settings) -> None:
    formatter = logging.Formatter(
        f"%(asctime)s %(levelname)s [{settings.instance_id}] %(name)s: %(message)s"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.log_dir, 0o700)
    handlers.append(logging.FileHandler(settings.log_dir / "agent.log"))
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(REDACTOR)  # on handlers: records from every logger pass through
        root.addHandler(handler)
    # One line per health check would drown the useful lines.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _claim_pid_file(path: Path) -> None:
    """Refuse to run beside a live agent on the same instance directory."""
    try:
        other = int(path.read_text().strip())
    except (OSError, ValueError):
        other = None
    if other and other != os.getpid() and pid_alive(other):
        if any("guest_agent" in part for part in process_cmdline(other)):
            raise SettingsError(f"another guest agent (pid {other}) runs on {path.parent}")
    write_private(path, f"{os.getpid()}\n", mode=0o644)


def main(argv: list[str] | None = None) -> int:
    fix_mmap_threshold()  # before any big buffer exists: see memory.py
    try:
        settings = parse_settings(argv)
        secret = settings.read_secret()
        # The db user must be able to traverse the instance dir (not list it).
        settings.instance_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.instance_dir, 0o711)
        _setup_logging(settings)
        _claim_pid_file(settings.pid_file)
        db_user = resolve_db_user(settings.datastore, settings.db_user)
        datastore = REGISTRY[settings.datastore](settings, db_user, REDACTOR)
        store = StateStore(settings.state_file, settings.instance_id, settings.datastore)
    except (SettingsError, ProcessError, DatastoreError, ValueError, OSError) as exc:
        print(f"guest agent: {exc}", file=sys.stderr)
        return 2
    REDACTOR.add([store.state.admin_password, settings.s3_secret_access_key])
    log.info(
        "starting: %s on %s (agent port %d, db port %d, db user %s, pid %d)",
        settings.datastore, settings.address, settings.agent_port, settings.db_port, db_user.name, os.getpid(),
    )

    factory = EventFactory(settings, secret, lambda: store.state.volume_size_gb or settings.volume_size_gb,
                           stats=DatastoreStats(datastore.stats))
    publisher = HttpPublisher(settings.broker_url, timeout_s=min(5.0, max(1.0, settings.heartbeat_interval * 2))) if settings.broker_url else None
    if publisher is None:
        log.warning("no --broker-url: heartbeats are not sent")
    supervisor: Supervisor
    heartbeater = Heartbeater(factory, publisher, lambda: supervisor.snapshot(), settings.heartbeat_interval)
    supervisor = Supervisor(settings, datastore, store, on_change=heartbeater.status_changed)

    backups = BackupRunner(settings, supervisor, engine_for(datastore, settings), heartbeater.emit)
    app = CommandApp(settings, secret, supervisor, factory, backups)
    try:
        http = serve(app, settings.address, settings.agent_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.address, settings.agent_port, exc)
        settings.pid_file.unlink(missing_ok=True)
        return 1
    http_thread = threading.Thread(target=http.serve_forever, name="http", daemon=True)
    http_thread.start()

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    heartbeater.start()
    supervisor.boot()
    if settings.user_data is not None:
        if store.state.prepared:
            settings.user_data.unlink(missing_ok=True)  # done with it: it held initial passwords
        elif settings.user_data.exists():
            run_user_data(app, settings.user_data)
    while not stop.wait(1.0):
        pass

    backups.shutdown()  # its failure result is queued before the heartbeats stop
    supervisor.shutdown()
    heartbeater.stop()
    http.shutdown()
    if publisher is not None:
        publisher.close()
    store.update(agent_pid=None, server_pid=None)
    settings.pid_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
