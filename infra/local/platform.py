"""`troveless up`: the whole platform on one machine, in one foreground process.

gateway (public API, every http function at its route)      127.0.0.1:8779
broker ingress (Knative Broker contract, queue in the DB)   127.0.0.1:8780/<ns>/<broker>
function host (every function at /<name>/, for the broker)  127.0.0.1:8781
scheduler (PingSource stand-in)                             in-process

Functions run in this process but are built by functions-framework's `create_app` and read
their settings from the environment, exactly as one Knative Service per function would.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from functions import settings as fsettings
from infra.local.broker import Chaos, LocalBroker
from infra.local.functions_host import FunctionHost, Gateway, build_apps
from infra.local.scheduler import Scheduler
from infra.spec import Spec

log = logging.getLogger("troveless.platform")

STATE_FILE = "platform.json"
LOCK_FILE = "platform.lock"


@dataclass
class PlatformConfig:
    data_dir: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8779
    ingress_port: int = 8780
    functions_port: int = 8781
    chaos: Chaos = field(default_factory=Chaos)
    scheduler: bool = True

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'troveless.db'}"


class _QuietHandler(WSGIRequestHandler):
    """The gateway logs requests itself; werkzeug's own access log would double every line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AlreadyRunning(RuntimeError):
    pass


class Platform:
    def __init__(self, spec: Spec, config: PlatformConfig) -> None:
        self.spec = spec
        self.config = config
        self._servers: list[tuple[str, BaseWSGIServer, threading.Thread]] = []
        self._lock_fh: Any = None
        self.broker: LocalBroker | None = None
        self.scheduler: Scheduler | None = None
        self.urls: dict[str, str] = {}

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        url = cfg.resolved_database_url
        log.info("shared database: %s", _redact(url))
        from functions.core import migrate

        migrate.upgrade(url)
        log.info("schema migrated to the latest revision")

        # Bind the ingress first: functions must know where to publish before they start.
        host_srv = self._bind("functions", cfg.functions_port, _NotReady())
        ingress_srv = self._bind("ingress", cfg.ingress_port, _NotReady())
        functions_base = f"http://{cfg.host}:{host_srv.server_port}"
        ingress_url = f"http://{cfg.host}:{ingress_srv.server_port}/{self.spec.namespace}/{self.spec.broker}"
        os.environ[fsettings.DATA_DIR_ENV] = str(cfg.data_dir)
        os.environ[fsettings.DATABASE_URL_ENV] = url
        os.environ["TROVELESS_BROKER_URL"] = ingress_url
        os.environ.pop("K_SINK", None)
        from functions.runtime import reset_runtime, runtime

        reset_runtime()
        rt = runtime()
        self._seed_catalog(rt)

        started = time.perf_counter()
        apps = build_apps(self.spec)
        log.info("loaded %d functions with functions-framework in %.2fs", len(apps), time.perf_counter() - started)

        def function_url(name: str) -> str:
            return f"{functions_base}/{name}/"

        self.broker = LocalBroker(self.spec, rt.sessions, function_url, chaos=cfg.chaos)
        released = self.broker.release_leases()
        if released:
            log.info("recovered %d in-flight deliveries from a previous run", released)
        host_srv.app = FunctionHost(apps)
        ingress_srv.app = self.broker.ingress_app
        gateway_srv = self._bind("gateway", cfg.port, Gateway(self.spec, apps))
        for name, server in (("functions", host_srv), ("ingress", ingress_srv), ("gateway", gateway_srv)):
            self._serve(name, server)
        self.broker.start()
        if cfg.chaos.active:
            log.warning("broker chaos switches on: %s", cfg.chaos)
        if cfg.scheduler:
            self.scheduler = Scheduler(self.spec, function_url)
            self.scheduler.start()
        self.urls = {
            "gateway": f"http://{cfg.host}:{gateway_srv.server_port}",
            "ingress": ingress_url,
            "functions": functions_base,
        }
        self._write_state()
        log.info("gateway  %s  (%d API routes)", self.urls["gateway"], len(self.spec.by_kind("http")))
        log.info("broker   %s  (%d triggers)", ingress_url, len(self.spec.by_kind("event")))
        log.info("functions %s  (%d functions)", functions_base, len(apps))
        if self.scheduler:
            log.info("scheduler: %s", ", ".join(sorted(self.scheduler.jobs)))

    def _seed_catalog(self, rt: Any) -> None:
        """First start: offer the database servers installed here, and default flavors."""
        from functions.core import catalog
        from functions.drivers import binaries

        installed = binaries.detect()
        with rt.transaction() as session:
            added = catalog.seed(session, installed)
        if added:
            log.info("catalog: added %s", ", ".join(added))
        if not installed:
            log.warning("no PostgreSQL or MariaDB server binaries found: instances cannot be created")

    def stop(self) -> None:
        log.info("stopping")
        if self.scheduler:
            self.scheduler.stop()
        for _, server, _ in reversed(self._servers):
            server.shutdown()
        if self.broker:
            self.broker.stop()
        for _, server, thread in self._servers:
            thread.join(timeout=10)
            server.server_close()
        self._servers.clear()
        from functions.runtime import reset_runtime

        reset_runtime()
        state = self.config.data_dir / STATE_FILE
        state.unlink(missing_ok=True)
        if self._lock_fh:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
        log.info("stopped")

    # ---- helpers ------------------------------------------------------------------------

    def _take_lock(self) -> None:
        path = self.config.data_dir / LOCK_FILE
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            state = read_state(self.config.data_dir)
            pid = state.get("pid", "?") if state else "?"
            raise AlreadyRunning(
                f"a platform is already running for {self.config.data_dir} (pid {pid}); "
                "stop it first or use --data-dir"
            ) from None
        self._lock_fh = fh

    def _bind(self, name: str, port: int, app: Any) -> BaseWSGIServer:
        try:
            server = make_server(self.config.host, port, app, threaded=True, request_handler=_QuietHandler)
        except SystemExit:  # werkzeug prints "Address already in use" and exits
            raise RuntimeError(f"cannot listen on {self.config.host}:{port} for the {name}: port in use") from None
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {self.config.host}:{port} for the {name}: {exc}") from exc
        server.daemon_threads = True
        return server

    def _serve(self, name: str, server: BaseWSGIServer) -> None:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name=name, daemon=True)
        thread.start()
        self._servers.append((name, server, thread))

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "instance": str(uuid.uuid4()),
            "started_at": time.time(),
            "urls": self.urls,
            "database_url": _redact(self.config.resolved_database_url),
            "functions": sorted(self.spec.functions),
            "schedules": sorted(self.scheduler.jobs) if self.scheduler else [],
        }
        path = self.config.data_dir / STATE_FILE
        path.write_text(json.dumps(state, indent=2), encoding="utf-8")


class _NotReady:
    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
        return [b"starting\n"]


def read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _redact(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)
