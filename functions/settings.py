"""Control-plane settings, read from the environment when first needed (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    token_file: Path
    broker_url: str | None
    # Seconds between guest heartbeats (the local compute driver passes it to each agent).
    heartbeat_interval_s: float = 5.0

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
        )
