"""Who is calling: the identity behind a token, and the local token file (embedded default).

The token file maps opaque tokens to a project and roles. It is re-read when it changes,
so `troveless token create` takes effect without a restart. Keystone replaces it in
production (TROVELESS_AUTH=keystone: functions/drivers/keystone_auth.py implements the
same `authenticate`; it may raise ServiceUnavailable when Keystone cannot be reached).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Identity:
    project_id: str
    user_id: str
    roles: tuple[str, ...] = field(default=("member",))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Identity | None: ...


class TokenFile:
    """Tokens stored as JSON: {"tokens": {"<token>": {"project_id", "user_id", "roles"}}}."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[str, Identity] = {}

    def authenticate(self, token: str) -> Identity | None:
        return self._load().get(token)

    def _load(self) -> dict[str, Identity]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                raw = json.loads(self.path.read_text(encoding="utf-8") or "{}")
                self._tokens = {
                    token: Identity(v["project_id"], v.get("user_id", v["project_id"]), tuple(v.get("roles", ["member"])))
                    for token, v in raw.get("tokens", {}).items()
                }
                self._stamp = stamp
            return self._tokens

    def issue(self, project_id: str, user_id: str, roles: tuple[str, ...]) -> str:
        """Create a token, write the file atomically (mode 0600) and return the token."""
        # Letters and digits only: a token starting with "-" reads as an option to CLIs
        # (`openstack --os-token -x...` fails), 1 in 32 of token_urlsafe's.
        token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        raw = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"tokens": {}}
        raw.setdefault("tokens", {})[token] = {"project_id": project_id, "user_id": user_id, "roles": list(roles)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(raw, fh, indent=2)
        os.replace(tmp, self.path)
        return token

    def entries(self) -> dict[str, Identity]:
        return dict(self._load())
