"""The agent's configuration: command-line options, each also readable from the environment.

Every option `--some-name` falls back to `TROVELESS_GUEST_SOME_NAME`, so a cloud-init unit or
the local driver can configure the agent without building a command line. The command line
wins over the environment. The key is read from a file (never from argv/env) so it does not
show up in `ps` or /proc/<pid>/environ.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from events.guest import AGENT_PORT

ENV_PREFIX = "TROVELESS_GUEST_"
DATASTORES = ("postgresql", "mariadb")
DEFAULT_DB_PORTS = {"postgresql": 5432, "mariadb": 3306}
# S3 credentials for backups: environment only (never argv, never events).
S3_ACCESS_KEY_ENV = "TROVELESS_S3_ACCESS_KEY_ID"
S3_SECRET_KEY_ENV = "TROVELESS_S3_SECRET_ACCESS_KEY"
# Instance ids end up in paths, event sources and SQL comments: keep them boring.
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SettingsError(ValueError):
    """The agent cannot start with this configuration (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    instance_id: str
    datastore: str
    instance_dir: Path
    address: str
    agent_port: int
    db_port: int
    key_file: Path
    broker_url: str | None
    heartbeat_interval: float
    volume_size_gb: int
    db_user: str | None  # None: decided by process.resolve_db_user (postgres/mysql or self)
    pg_bin_dir: Path | None
    mariadb_bin: Path | None
    restart_backoff: float
    log_level: str
    # Cloud-init style user data: the signed prepare command, written beside the agent by
    # the compute driver so preparing starts at boot without waiting for a round trip.
    user_data: Path | None = None
    # Where freshly initialised data directories are kept to be copied for the next instance
    # of the same datastore, version and size (initdb / install-db dominate a cold start).
    template_dir: Path | None = None
    # zstd worker threads for backup compression (0: compress on the backup's own thread).
    backup_compress_threads: int = 0
    # Read the backup tool's output at most this fast (MB/s; 0: unlimited), so a backup
    # does not starve the database of disk bandwidth. The tool blocks on the full pipe.
    backup_max_rate_mb: float = 0.0
    # None: boto3's default credential chain. Kept out of repr so no log line shows them.
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)

    # Layout of the instance directory (all owned by the agent).
    @property
    def volume_dir(self) -> Path:
        return self.instance_dir / "volume"

    @property
    def data_dir(self) -> Path:
        return self.volume_dir / "data"

    @property
    def run_dir(self) -> Path:
        return self.instance_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.instance_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.instance_dir / "agent.json"

    @property
    def pid_file(self) -> Path:
        return self.instance_dir / "agent.pid"

    def read_secret(self) -> bytes:
        """The instance's HMAC key: raw bytes, refused if others could read it."""
        try:
            st = self.key_file.stat()
            secret = self.key_file.read_bytes()
        except OSError as exc:
            raise SettingsError(f"cannot read key file {self.key_file}: {exc.strerror}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SettingsError(
                f"key file {self.key_file} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); it must be 0600"
            )
        if len(secret) < 16:
            raise SettingsError(f"key file {self.key_file} holds fewer than 16 bytes")
        return secret


def _env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m guest_agent",
        description="Troveless guest agent: runs and supervises one database server.",
        epilog=f"Every option can also be set in the environment as {ENV_PREFIX}<OPTION_NAME>.",
    )

    def opt(name: str, *, required: bool = False, **kwargs):  # type: ignore[no-untyped-def]
        env_value = env.get(_env_name(name))
        if env_value is not None:
            kwargs["default"] = env_value
        parser.add_argument(
            f"--{name}",
            required=required and env_value is None,
            help=f"{kwargs.pop('help', '')} [env {_env_name(name)}]",
            **kwargs,
        )

    opt("instance-id", required=True, help="the instance this agent speaks for")
    opt("datastore", required=True, choices=DATASTORES, help="database engine")
    opt("instance-dir", required=True, help="directory owned by the agent (volume, run, state)")
    opt("address", required=True, help="the instance's own loopback IPv4 (e.g. 127.0.0.23)")
    opt("agent-port", type=int, default=AGENT_PORT, help="command server port")
    opt("db-port", type=int, default=None, help="database port (default 5432 / 3306)")
    opt("key-file", required=True, help="file holding the instance's HMAC secret (mode 0600)")
    opt("broker-url", default=None, help="where heartbeats are POSTed (none: not sent)")
    opt("heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats")
    opt("volume-size-gb", type=int, default=1, help="size of the instance's volume")
    opt("db-user", default=None, help="OS user running the database server")
    opt("pg-bin-dir", default=None, help="PostgreSQL bin directory (default: highest installed)")
    opt("mariadb-bin", default=None, help="mariadbd binary (default /usr/sbin/mariadbd)")
    opt("restart-backoff", type=float, default=1.0, help="first crash-restart delay, doubles")
    opt("log-level", default="INFO", help="logging level")
    opt("user-data", default=None, help="file holding a signed prepare command to run at boot")
    opt("template-dir", default=None, help="cache of initialised data directories (root only)")
    opt("backup-compress-threads", type=int, default=0,
        help="zstd worker threads compressing a backup (0: none, compress inline)")
    opt("backup-max-rate-mb", type=float, default=0.0,
        help="read a backup at most this many MB/s (0: unlimited)")
    return parser


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    # argparse does not apply `type`/`choices` to defaults taken from the environment.
    try:
        datastore = str(args.datastore)
        if datastore not in DATASTORES:
            raise SettingsError(f"datastore must be one of {', '.join(DATASTORES)}")
        instance_id = str(args.instance_id)
        if not _INSTANCE_ID.match(instance_id):
            raise SettingsError(f"invalid instance id {instance_id!r}")
        address = str(args.address)
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise SettingsError(f"--address must be an IPv4 address: {exc}") from exc
        if ip == ipaddress.IPv4Address("0.0.0.0"):
            raise SettingsError("--address must be the instance's own address, not 0.0.0.0")
        interval = float(args.heartbeat_interval)
        if interval <= 0:
            raise SettingsError("--heartbeat-interval must be > 0")
        compress_threads = int(args.backup_compress_threads)
        if compress_threads < 0:
            raise SettingsError("--backup-compress-threads must be >= 0")
        max_rate = float(args.backup_max_rate_mb)
        if max_rate < 0:
            raise SettingsError("--backup-max-rate-mb must be >= 0")
        db_port = int(args.db_port) if args.db_port is not None else DEFAULT_DB_PORTS[datastore]
        return Settings(
            instance_id=instance_id,
            datastore=datastore,
            instance_dir=Path(args.instance_dir).resolve(),
            address=address,
            agent_port=int(args.agent_port),
            db_port=db_port,
            key_file=Path(args.key_file),
            broker_url=args.broker_url or None,
            heartbeat_interval=interval,
            volume_size_gb=int(args.volume_size_gb),
            db_user=args.db_user or None,
            pg_bin_dir=Path(args.pg_bin_dir) if args.pg_bin_dir else None,
            mariadb_bin=Path(args.mariadb_bin) if args.mariadb_bin else None,
            restart_backoff=max(0.0, float(args.restart_backoff)),
            log_level=str(args.log_level).upper(),
            user_data=Path(args.user_data) if args.user_data else None,
            template_dir=Path(args.template_dir) if args.template_dir else None,
            backup_compress_threads=compress_threads,
            backup_max_rate_mb=max_rate,
            s3_access_key_id=env.get(S3_ACCESS_KEY_ENV) or None,
            s3_secret_access_key=env.get(S3_SECRET_KEY_ENV) or None,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(str(exc)) from exc
