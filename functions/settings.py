"""Control-plane settings, read from the environment when first needed (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "TROVELESS_DATA_DIR"
DATABASE_URL_ENV = "TROVELESS_DATABASE_URL"
TOKEN_FILE_ENV = "TROVELESS_TOKEN_FILE"


def default_data_dir() -> Path:
    """~/.local/share/troveless; as root /var/lib/troveless, because the database servers
    then run as an unprivileged user who must be able to reach the instances' data."""
    if os.geteuid() == 0 and not os.environ.get("XDG_DATA_HOME"):
        return Path("/var/lib/troveless")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "troveless"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class BackupSettings:
    """Where backups go. S3 credentials are read by the storage driver and by each guest
    agent from TROVELESS_S3_ACCESS_KEY_ID / TROVELESS_S3_SECRET_ACCESS_KEY (never stored
    in events or the database)."""

    # "file" (a directory on this machine: the embedded default) or "s3".
    store: str
    # The file store's root: containers are directories under it.
    directory: Path
    # Trove's backup_swift_container: the default container (an S3 bucket, or a directory).
    container: str = "database-backups"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_path_style: bool = False
    # A running backup with no progress event for this long is failed (the guest died).
    stall_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, data_dir: Path) -> BackupSettings:
        env = os.environ.get
        store = (env("TROVELESS_BACKUP_STORE") or "file").lower()
        if store not in ("file", "s3"):
            raise ValueError(f"TROVELESS_BACKUP_STORE must be 'file' or 's3', not {store!r}")
        return cls(
            store=store,
            directory=Path(env("TROVELESS_BACKUP_DIR") or data_dir / "backups").expanduser(),
            container=env("TROVELESS_BACKUP_CONTAINER") or "database-backups",
            s3_endpoint_url=env("TROVELESS_S3_ENDPOINT_URL") or None,
            s3_region=env("TROVELESS_S3_REGION") or None,
            s3_path_style=_flag(env("TROVELESS_S3_PATH_STYLE")),
            stall_timeout_s=float(env("TROVELESS_BACKUP_STALL_TIMEOUT") or 60),
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    token_file: Path
    broker_url: str | None
    # Seconds between guest heartbeats (the local compute driver passes it to each agent).
    heartbeat_interval_s: float = 5.0
    backups: BackupSettings = field(default_factory=lambda: BackupSettings(store="file", directory=Path("backups")))

    @classmethod
    def from_env(cls) -> Settings:
        from events.publisher import sink_url_from_env

        data_dir = Path(os.environ.get(DATA_DIR_ENV) or default_data_dir()).expanduser()
        return cls(
            data_dir=data_dir,
            database_url=os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{data_dir / 'troveless.db'}",
            token_file=Path(os.environ.get(TOKEN_FILE_ENV) or data_dir / "tokens.json"),
            broker_url=sink_url_from_env(),
            heartbeat_interval_s=float(os.environ.get("TROVELESS_HEARTBEAT_INTERVAL", "5")),
            backups=BackupSettings.from_env(data_dir),
        )
