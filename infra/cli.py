"""`troveless`: run the local platform and look inside it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

from functions import settings as fsettings
from functions.drivers.compute_local import process_alive

DEFAULT_PROJECT_NOTE = "created by `troveless up` for local use"


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get(fsettings.DATA_DIR_ENV) or fsettings.default_data_dir()).expanduser()


def _database_url(args: argparse.Namespace, data_dir: Path) -> str:
    return (
        getattr(args, "database_url", None)
        or os.environ.get(fsettings.DATABASE_URL_ENV)
        or f"sqlite:///{data_dir / 'troveless.db'}"
    )


def _use_environment(args: argparse.Namespace) -> Path:
    """Point this process's runtime at the same data dir and database as `troveless up`."""
    data_dir = _data_dir(args)
    os.environ[fsettings.DATA_DIR_ENV] = str(data_dir)
    os.environ[fsettings.DATABASE_URL_ENV] = _database_url(args, data_dir)
    return data_dir


def _configure_logging(verbose: bool = False) -> None:
    from functions.core import logs

    # TROVELESS_LOG_FORMAT=json: one JSON object per line, with request and event ids.
    logs.configure(fsettings.log_format_from_env(), level=logging.DEBUG if verbose else logging.INFO,
                   stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "alembic", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def ensure_default_token(token_file: Path) -> tuple[str, str]:
    """The local operator's token: created once, reused on every start."""
    import json

    from functions.core.auth import TokenFile

    store = TokenFile(token_file)
    if token_file.exists():
        raw = json.loads(token_file.read_text(encoding="utf-8"))
        default = raw.get("default")
        if default and default in raw.get("tokens", {}):
            return raw["tokens"][default]["project_id"], default
    project = uuid.uuid4().hex
    token = store.issue(project, "admin", ("admin", "member"))
    raw = json.loads(token_file.read_text(encoding="utf-8"))
    raw["default"] = token
    raw["note"] = DEFAULT_PROJECT_NOTE
    tmp = token_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(raw, fh, indent=2)
    os.replace(tmp, token_file)
    return project, token


def cmd_up(args: argparse.Namespace) -> int:
    from infra.local.broker import Chaos
    from infra.local.platform import AlreadyRunning, Platform, PlatformConfig
    from infra.spec import load_spec

    _configure_logging(args.verbose)
    log = logging.getLogger("troveless")
    data_dir = _data_dir(args)
    config = PlatformConfig(
        data_dir=data_dir,
        database_url=_database_url(args, data_dir),
        host=args.host,
        port=args.port,
        ingress_port=args.ingress_port,
        functions_port=args.functions_port,
        chaos=Chaos(duplicate=args.chaos_duplicate, reorder=args.chaos_reorder, delay_max_s=args.chaos_delay),
    )
    platform = Platform(load_spec(args.spec), config)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        keystone = fsettings.KeystoneSettings.from_env() if fsettings.auth_from_env() == "keystone" else None
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    # The token exists before the gateway answers, so whoever sees it up can use it
    # (with Keystone there is no local token: Keystone issues them).
    if keystone is None:
        project, token = ensure_default_token(data_dir / "tokens.json")
    try:
        platform.start()
    except (AlreadyRunning, RuntimeError) as exc:
        log.error("%s", exc)
        platform.stop()
        return 1
    if keystone is not None:
        print(
            f"\nTroveless is up; tokens are validated by Keystone at {keystone.url} (as {keystone.username}).\n"
            "Register it in Keystone's catalog, then use the client as with any cloud:\n\n"
            "  openstack service create --name trove database\n"
            f"  openstack endpoint create --region RegionOne database public '{platform.urls['gateway']}/v1.0/%(tenant_id)s'\n"
            "  openstack database flavor list\n\n"
            f"data: {data_dir}   stop: Ctrl-C\n",
            flush=True,
        )
    else:
        endpoint = f"{platform.urls['gateway']}/v1.0/{project}"
        print(
            "\nTroveless is up. Point the OpenStack client at it:\n\n"
            f"  export OS_AUTH_TYPE=admin_token OS_ENDPOINT={endpoint} OS_TOKEN={token}\n"
            "  openstack database flavor list\n\n"
            "or in one line:\n"
            f"  openstack --os-auth-type admin_token --os-endpoint {endpoint} --os-token {token} database flavor list\n\n"
            f"data: {data_dir}   stop: Ctrl-C\n",
            flush=True,
        )
    if not args.no_selfcheck:
        threading.Thread(target=_startup_selfcheck, name="selfcheck", daemon=True).start()
    stop.wait()
    platform.stop()
    return 0


def _startup_selfcheck() -> None:
    from infra.local.selfcheck import run_selfcheck

    log = logging.getLogger("troveless.selfcheck")
    result = run_selfcheck()
    if result.status == "SUCCEEDED":
        log.info("event path OK: 3-step workflow finished in %.0f ms", result.seconds * 1000)
    else:
        log.error("event path check %s after %.1fs: %s", result.status, result.seconds, result.error)


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    from infra.local.platform import read_state

    data_dir = _use_environment(args)
    state = read_state(data_dir)
    running = bool(state) and process_alive(int(state["pid"]))  # type: ignore[index]
    if not running:
        print(f"not running (data dir {data_dir})")
    else:
        assert state is not None
        print(f"running: pid {state['pid']}, data dir {data_dir}")
        for name, url in state["urls"].items():
            print(f"  {name:<10} {url}")
        try:
            code = httpx.get(state["urls"]["gateway"] + "/", timeout=5).status_code
            print(f"  gateway answers GET / with {code}")
        except httpx.HTTPError as exc:
            print(f"  gateway does not answer: {exc}")
        print(f"  schedules  {', '.join(state.get('schedules', []))}")
    _print_counts()
    return 0 if running else 3


def _print_counts() -> None:
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from functions.core.models.platform import BrokerDelivery, DeadLetter, OutboxEvent, WorkflowRun
    from functions.runtime import runtime

    try:
        with runtime().sessions() as s:
            queued = s.execute(select(func.count()).select_from(BrokerDelivery)).scalar_one()
            outbox = s.execute(select(func.count()).select_from(OutboxEvent)).scalar_one()
            dead = s.execute(select(func.count()).select_from(DeadLetter)).scalar_one()
            runs = dict(s.execute(select(WorkflowRun.status, func.count()).group_by(WorkflowRun.status)).all())
    except SQLAlchemyError as exc:
        print(f"  database not readable: {exc.__class__.__name__}")
        return
    print(f"  queue: {queued} pending deliveries, outbox: {outbox}, dead letters: {dead}")
    print("  workflow runs: " + (", ".join(f"{k} {v}" for k, v in sorted(runs.items())) or "none"))




def cmd_dead_letters(args: argparse.Namespace) -> int:
    from functions.core import deadletters
    from functions.runtime import runtime

    _use_environment(args)
    with runtime().sessions() as session:
        rows = deadletters.recent(session, args.limit)
    if not rows:
        print("no dead letters")
        return 0
    print(f"{'id':>5}  {'recorded (UTC)':<19}  {'code':<4}  {'type':<40}  event id / source")
    for row in rows:
        print(
            f"{row.id:>5}  {row.created_at:%Y-%m-%d %H:%M:%S}  {row.error_code or '-':<4}  "
            f"{row.event_type:<40}  {row.event_id} / {row.event_source}"
        )
        if args.verbose and row.error_dest:
            print(f"       destination: {row.error_dest}")
    return 0


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from infra.local.platform import read_state
    from infra.local.selfcheck import run_selfcheck

    data_dir = _use_environment(args)
    state = read_state(data_dir)
    if not state or not process_alive(int(state["pid"])):
        print("the platform is not running: start it with `troveless up`", file=sys.stderr)
        return 3
    os.environ["TROVELESS_BROKER_URL"] = state["urls"]["ingress"]
    result = run_selfcheck(args.timeout)
    print(f"selfcheck run {result.run_id}: {result.status} in {result.seconds * 1000:.0f} ms")
    if result.error:
        print(f"  {result.error}")
    return 0 if result.status == "SUCCEEDED" else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from functions.core import migrate

    data_dir = _data_dir(args)
    data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(_database_url(args, data_dir))
    print("database is at the latest schema")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from functions.core.auth import TokenFile

    data_dir = _data_dir(args)
    store = TokenFile(data_dir / "tokens.json")
    if args.action == "create":
        roles = ("admin", "member") if args.admin else ("member",)
        project = args.project or uuid.uuid4().hex
        token = store.issue(project, args.user or project, roles)
        print(f"project {project}\ntoken   {token}")
        return 0
    for token, identity in store.entries().items():
        print(f"{token}  project={identity.project_id}  roles={','.join(identity.roles)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="troveless", description="Troveless: Trove-compatible DBaaS as functions")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="where data lives (default ~/.local/share/troveless)")
    common.add_argument("--database-url", help="shared database (default: SQLite file in the data dir)")
    common.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start the local platform in the foreground")
    up.add_argument("--spec", help="serverless.yaml to serve (default: the project's)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8779, help="API gateway port")
    up.add_argument("--ingress-port", type=int, default=8780, help="broker ingress port")
    up.add_argument("--functions-port", type=int, default=8781, help="function host port")
    up.add_argument("--no-selfcheck", action="store_true", help="skip the event-path check at start")
    up.add_argument("--chaos-duplicate", type=float, default=0.0, metavar="P", help="duplicate deliveries with probability P")
    up.add_argument("--chaos-reorder", action="store_true", help="deliver due events in random order")
    up.add_argument("--chaos-delay", type=float, default=0.0, metavar="S", help="delay deliveries randomly by up to S seconds")
    up.set_defaults(func=cmd_up)

    sub.add_parser("status", parents=[common], help="show what runs").set_defaults(func=cmd_status)
    dl = sub.add_parser("dead-letters", parents=[common], help="list events the broker gave up on")
    dl.add_argument("--limit", type=int, default=50)
    dl.set_defaults(func=cmd_dead_letters)
    sc = sub.add_parser("selfcheck", parents=[common], help="run a 3-step workflow through the running platform")
    sc.add_argument("--timeout", type=float, default=30.0)
    sc.set_defaults(func=cmd_selfcheck)
    sub.add_parser("migrate", parents=[common], help="migrate the shared database").set_defaults(func=cmd_migrate)
    tok = sub.add_parser("token", parents=[common], help="local tokens (the embedded auth)")
    tok.add_argument("action", choices=["create", "list"])
    tok.add_argument("--project")
    tok.add_argument("--user")
    tok.add_argument("--admin", action="store_true")
    tok.set_defaults(func=cmd_token)
    oa = sub.add_parser("openapi", help="regenerate functions/api/openapi.json from serverless.yaml and the models")
    oa.add_argument("--out", help="write here instead")
    oa.set_defaults(func=cmd_openapi)
    rk = sub.add_parser("render", help="render deployment manifests from serverless.yaml (docs/deploy-knative.md)")
    rk.add_argument("platform", choices=["knative"])
    rk.add_argument("--spec", help="serverless.yaml to render (default: the project's)")
    rk.add_argument("--out", help="write one YAML file per kind into this directory (default: stdout)")
    rk.add_argument("--image", help="the functions image (default: infra.knative.IMAGE)")
    rk.add_argument("--namespace", help="Kubernetes namespace (default: the spec's)")
    rk.add_argument("--gateway", help="the Gateway API Gateway the HTTPRoutes attach to")
    rk.set_defaults(func=cmd_render)
    return parser


def cmd_render(args: argparse.Namespace) -> int:
    from infra import knative
    from infra.spec import load_spec

    try:
        objects = knative.render(
            load_spec(args.spec),
            namespace=args.namespace,
            image=args.image or knative.IMAGE,
            gateway=args.gateway or knative.GATEWAY,
        )
    except ValueError as exc:  # RenderError, or serverless.yaml failing validation
        print(f"cannot render: {exc}", file=sys.stderr)
        return 1
    if args.out:
        for path in knative.write(objects, args.out):
            print(path)
    else:
        sys.stdout.write(knative.dump(objects))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from infra import openapi

    print(openapi.write(Path(args.out)) if args.out else openapi.write())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
