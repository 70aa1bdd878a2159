"""Control-plane settings, read from the environment when first needed (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "TROVELESS_DATA_DIR"
DATABASE_URL_ENV = "TROVELESS_DATABASE_URL"
TOKEN_FILE_ENV = "TROVELESS_TOKEN_FILE"
LOG_FORMAT_ENV = "TROVELESS_LOG_FORMAT"


def default_data_dir() -> Path:
    """~/.local/share/troveless; as root /var/lib/troveless, because the database servers
    then run as an unprivileged user who must be able to reach the instances' data."""
    if os.geteuid() == 0 and not os.environ.get("XDG_DATA_HOME"):
        return Path("/var/lib/troveless")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "troveless"


def log_format_from_env() -> str:
    """`text` (default: one readable line per record) or `json` (one JSON object per line,
    with the request and event ids: what a log collector wants; see functions/core/logs.py)."""
    value = (os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"{LOG_FORMAT_ENV} must be 'text' or 'json', not {value!r}")
    return value


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


# LimitSettings from the environment: Trove's option names, prefixed.
LIMIT_ENV = {
    "max_instances": "TROVELESS_MAX_INSTANCES_PER_TENANT",
    "max_ram_mb": "TROVELESS_MAX_RAM_PER_TENANT",
    "max_volumes_gb": "TROVELESS_MAX_VOLUMES_PER_TENANT",
    "max_backups": "TROVELESS_MAX_BACKUPS_PER_TENANT",
    "http_get_rate": "TROVELESS_HTTP_GET_RATE",
    "http_post_rate": "TROVELESS_HTTP_POST_RATE",
    "http_put_rate": "TROVELESS_HTTP_PUT_RATE",
    "http_delete_rate": "TROVELESS_HTTP_DELETE_RATE",
    "http_mgmt_post_rate": "TROVELESS_HTTP_MGMT_POST_RATE",
}


@dataclass(frozen=True)
class LimitSettings:
    """Quota defaults per project (Trove's max_*_per_tenant; -1 = unlimited; per-project
    overrides live in the `quotas` table) and API rate limits (Trove's http_*_rate: requests
    per minute per project, shared by every function instance; 0 or -1 = off)."""

    max_instances: int = 10
    max_ram_mb: int = -1
    max_volumes_gb: int = 40
    max_backups: int = 50
    http_get_rate: int = 200
    http_post_rate: int = 200
    http_put_rate: int = 200
    http_delete_rate: int = 200
    http_mgmt_post_rate: int = 200

    @classmethod
    def from_env(cls) -> LimitSettings:
        values = {}
        for name, var in LIMIT_ENV.items():
            raw = (os.environ.get(var) or "").strip()
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var} must be an integer, not {raw!r}") from None
        return cls(**values)


@dataclass(frozen=True)
class KeystoneSettings:
    """TROVELESS_AUTH=keystone: tokens are validated by a Keystone v3 with the service user's
    own token (keystonemiddleware's job in Trove). The password is read from the environment
    only and never shown (repr=False)."""

    # Keystone's base URL; a trailing /v3 is accepted (the OS_AUTH_URL form).
    url: str
    username: str
    password: str = field(repr=False)
    project: str = "service"
    user_domain: str = "Default"
    project_domain: str = "Default"
    # A validated token is trusted for this long (at most until it expires): a token revoked
    # in Keystone is still accepted for up to this many seconds.
    cache_ttl_s: float = 60.0

    @classmethod
    def from_env(cls) -> KeystoneSettings:
        env = os.environ.get
        missing = [name for name in ("TROVELESS_KEYSTONE_URL", "TROVELESS_KEYSTONE_USERNAME",
                                     "TROVELESS_KEYSTONE_PASSWORD") if not env(name)]
        if missing:
            raise ValueError(f"TROVELESS_AUTH=keystone needs {', '.join(missing)}")
        return cls(
            url=env("TROVELESS_KEYSTONE_URL", ""),
            username=env("TROVELESS_KEYSTONE_USERNAME", ""),
            password=env("TROVELESS_KEYSTONE_PASSWORD", ""),
            project=env("TROVELESS_KEYSTONE_PROJECT") or "service",
            user_domain=env("TROVELESS_KEYSTONE_USER_DOMAIN") or "Default",
            project_domain=env("TROVELESS_KEYSTONE_PROJECT_DOMAIN") or "Default",
            cache_ttl_s=float(env("TROVELESS_KEYSTONE_CACHE_TTL") or 60),
        )


@dataclass(frozen=True)
class OpenStackSettings:
    """TROVELESS_COMPUTE=openstack: servers on Nova, volumes on Cinder, ports and security
    groups on Neutron (functions/drivers/compute_openstack.py). Credentials are openstacksdk's
    own: the `OS_*` variables, or OS_CLOUD naming an entry of clouds.yaml."""

    # The Neutron network the instances' ports are made on (the control plane must reach it).
    network_id: str
    # Who may reach an instance's database and guest agent ports (the control plane's network).
    control_cidr: str
    # A clouds.yaml entry (None: openstacksdk reads OS_CLOUD or the OS_* variables).
    cloud: str | None = None
    region: str | None = None
    volume_type: str | None = None
    availability_zone: str | None = None
    # A Nova keypair for operators' SSH access (none by default).
    key_name: str | None = None
    # What cloud-init pip-installs on the server to run the guest agent.
    guest_package: str = "troveless"

    @classmethod
    def from_env(cls) -> OpenStackSettings:
        import ipaddress

        env = os.environ.get
        missing = [name for name in ("TROVELESS_OS_NETWORK_ID", "TROVELESS_OS_CONTROL_CIDR") if not env(name)]
        if missing:
            raise ValueError(f"TROVELESS_COMPUTE=openstack needs {', '.join(missing)}")
        cidr = env("TROVELESS_OS_CONTROL_CIDR", "")
        try:
            cidr = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"TROVELESS_OS_CONTROL_CIDR must be a CIDR, not {cidr!r}") from None
        return cls(
            network_id=env("TROVELESS_OS_NETWORK_ID", ""),
            control_cidr=cidr,
            cloud=env("TROVELESS_OS_CLOUD") or None,
            region=env("TROVELESS_OS_REGION") or None,
            volume_type=env("TROVELESS_OS_VOLUME_TYPE") or None,
            availability_zone=env("TROVELESS_OS_AVAILABILITY_ZONE") or None,
            key_name=env("TROVELESS_OS_KEY_NAME") or None,
            guest_package=env("TROVELESS_OS_GUEST_PACKAGE") or "troveless",
        )


def compute_from_env() -> str:
    compute = (os.environ.get("TROVELESS_COMPUTE") or "local").strip().lower()
    if compute not in ("local", "openstack"):
        raise ValueError(f"TROVELESS_COMPUTE must be 'local' or 'openstack', not {compute!r}")
    return compute


def auth_from_env() -> str:
    auth = (os.environ.get("TROVELESS_AUTH") or "tokenfile").strip().lower()
    if auth not in ("tokenfile", "keystone"):
        raise ValueError(f"TROVELESS_AUTH must be 'tokenfile' or 'keystone', not {auth!r}")
    return auth


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    token_file: Path
    broker_url: str | None
    # Seconds between guest heartbeats (the local compute driver passes it to each agent).
    heartbeat_interval_s: float = 5.0
    backups: BackupSettings = field(default_factory=lambda: BackupSettings(store="file", directory=Path("backups")))
    # TROVELESS_LOG_FORMAT: "text" or "json".
    log_format: str = "text"
    limits: LimitSettings = field(default_factory=LimitSettings)
    # TROVELESS_AUTH: "tokenfile" (the local token file) or "keystone" (then `keystone` is set).
    auth: str = "tokenfile"
    keystone: KeystoneSettings | None = None
    # TROVELESS_COMPUTE: "local" (processes on this machine) or "openstack" (then `openstack` is set).
    compute: str = "local"
    openstack: OpenStackSettings | None = None

    @classmethod
    def from_env(cls) -> Settings:
        from events.publisher import sink_url_from_env

        data_dir = Path(os.environ.get(DATA_DIR_ENV) or default_data_dir()).expanduser()
        auth = auth_from_env()
        compute = compute_from_env()
        return cls(
            data_dir=data_dir,
            database_url=os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{data_dir / 'troveless.db'}",
            token_file=Path(os.environ.get(TOKEN_FILE_ENV) or data_dir / "tokens.json"),
            broker_url=sink_url_from_env(),
            heartbeat_interval_s=float(os.environ.get("TROVELESS_HEARTBEAT_INTERVAL", "5")),
            backups=BackupSettings.from_env(data_dir),
            log_format=log_format_from_env(),
            limits=LimitSettings.from_env(),
            auth=auth,
            keystone=KeystoneSettings.from_env() if auth == "keystone" else None,
            compute=compute,
            openstack=OpenStackSettings.from_env() if compute == "openstack" else None,
        )
