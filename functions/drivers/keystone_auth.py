"""Keystone v3 token validation: what keystonemiddleware's auth_token does for Trove.

A user's `X-Auth-Token` is validated with `GET /v3/auth/tokens` (`X-Subject-Token`: the
user's token, `X-Auth-Token`: our service token). The service token is obtained with the
service user's password, scoped to the service project, kept until shortly before it
expires, and renewed when Keystone answers 401 to it.

Validated tokens are cached in memory (an LRU, per process) for `cache_ttl_s` at most and
never past the token's own expiry, so the hot path does not call Keystone per request.
The price: a token revoked in Keystone is still accepted for up to `cache_ttl_s` seconds
(keystonemiddleware's `token_cache_time` has the same trade-off). Unknown, expired and
revoked tokens are cached as invalid for the same time.

Keystone unreachable, failing, or refusing our own credentials is a 503
(`ServiceUnavailable`), never a 500 nor a 401 that would blame the user's token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from functions.core import errors
from functions.core.auth import Identity
from functions.settings import KeystoneSettings

log = logging.getLogger("troveless.auth.keystone")

_UNAVAILABLE = "The identity service is unavailable; try again later."


def _expiry(value: str | None) -> float | None:
    """Keystone's `expires_at` ("2026-11-22T07:00:57.000000Z") as a Unix time."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class _TTLCache:
    """A bounded LRU whose entries also expire; thread-safe."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> tuple[bool, Identity | None]:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False, None
            if entry[0] <= now:
                del self._data[key]
                return False, None
            self._data.move_to_end(key)
            return True, entry[1]

    def put(self, key: str, value: Identity | None, until: float) -> None:
        with self._lock:
            self._data[key] = (until, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class KeystoneAuthenticator:
    """`Authenticator` backed by Keystone v3 (see the module docstring)."""

    def __init__(
        self,
        settings: KeystoneSettings,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.base_url = settings.url.rstrip("/").removesuffix("/v3")
        self.client = client or httpx.Client(timeout=timeout_s)
        self.clock = clock
        self.cache = _TTLCache(cache_size)
        self._service_lock = threading.Lock()
        self._service_token: str | None = None
        self._service_renew_at = 0.0

    # ---- Authenticator ----------------------------------------------------------------------

    def authenticate(self, token: str) -> Identity | None:
        # Keyed by a digest: the cache does not keep users' tokens themselves.
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        now = self.clock()
        hit, identity = self.cache.get(key, now)
        if hit:
            return identity
        identity, expires_at = self._validate(token)
        until = now + self.settings.cache_ttl_s
        if expires_at is not None:
            until = min(until, expires_at)
        if until > now:
            self.cache.put(key, identity, until)
        return identity

    # ---- Keystone calls -----------------------------------------------------------------------

    def _validate(self, token: str) -> tuple[Identity | None, float | None]:
        service_token = self._get_service_token()
        response = self._get_token(token, service_token)
        if response.status_code == 401:
            # Our service token was refused (expired early, revoked, keys rotated): renew once.
            response = self._get_token(token, self._get_service_token(refused=service_token))
        status = response.status_code
        if status in (401, 404):
            # 404: unknown, expired or revoked. A second 401 with a fresh service token too.
            if status == 401:
                log.warning("keystone refused a fresh service token while validating a user token")
            return None, None
        if status == 403:
            log.error("keystone refused to validate tokens for service user %r: it needs the "
                      "'service' or 'admin' role on project %r", self.settings.username, self.settings.project)
            raise errors.ServiceUnavailable(_UNAVAILABLE)
        if status != 200:
            log.error("keystone answered %d to a token validation", status)
            raise errors.ServiceUnavailable(_UNAVAILABLE)
        try:
            body = response.json()["token"]
        except (ValueError, KeyError, TypeError):
            log.error("keystone's token validation answer is not a token document")
            raise errors.ServiceUnavailable(_UNAVAILABLE) from None
        return self._identity(body), _expiry(body.get("expires_at"))

    def _identity(self, body: dict[str, Any]) -> Identity:
        project = body.get("project") or {}
        if not project.get("id"):
            # Unscoped, domain- or system-scoped: the API's URLs are per project.
            raise errors.Unauthorized("The token is not scoped to a project; get a project-scoped token.")
        names = {str(role.get("name", "")).lower() for role in body.get("roles") or []}
        roles: tuple[str, ...] = ("admin", "member") if "admin" in names else ("member",)
        user_id = str((body.get("user") or {}).get("id") or project["id"])
        return Identity(project_id=str(project["id"]), user_id=user_id, roles=roles)

    def _get_token(self, token: str, service_token: str) -> httpx.Response:
        try:
            return self.client.get(
                f"{self.base_url}/v3/auth/tokens",
                params={"nocatalog": ""},
                headers={"X-Auth-Token": service_token, "X-Subject-Token": token, "Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("keystone at %s is unreachable: %s", self.base_url, type(exc).__name__)
            raise errors.ServiceUnavailable(_UNAVAILABLE) from None

    def _get_service_token(self, *, refused: str | None = None) -> str:
        """The service token: kept until shortly before it expires, or until Keystone refused
        it (`refused`: then renewed once, whichever thread saw the refusal first)."""
        with self._service_lock:
            now = self.clock()
            current = self._service_token
            if current is not None:
                if refused is not None and current != refused:
                    return current  # another thread renewed it already
                if refused is None and now < self._service_renew_at:
                    return current
            s = self.settings
            body = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": s.username, "password": s.password, "domain": {"name": s.user_domain}}}},
                "scope": {"project": {"name": s.project, "domain": {"name": s.project_domain}}},
            }}
            try:
                response = self.client.post(f"{self.base_url}/v3/auth/tokens", params={"nocatalog": ""}, json=body)
            except httpx.HTTPError as exc:
                log.warning("keystone at %s is unreachable: %s", self.base_url, type(exc).__name__)
                raise errors.ServiceUnavailable(_UNAVAILABLE) from None
            if response.status_code != 201 or not response.headers.get("X-Subject-Token"):
                # Never the password: only who we tried to be.
                log.error("keystone refused the service credentials of user %r (domain %r) on project %r: HTTP %d",
                          s.username, s.user_domain, s.project, response.status_code)
                raise errors.ServiceUnavailable(_UNAVAILABLE)
            try:
                expires_at = _expiry(response.json()["token"]["expires_at"])
            except (ValueError, KeyError, TypeError):
                expires_at = None
            lifetime = (expires_at - now) if expires_at is not None else 300.0
            # Renew shortly before it expires: 30 s early, or halfway for a short-lived token.
            self._service_renew_at = now + max(0.0, lifetime - min(30.0, lifetime / 2))
            self._service_token = response.headers["X-Subject-Token"]
            return self._service_token
