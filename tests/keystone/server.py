"""A real Keystone (the `keystone` package, from .venv-keystone) on a loopback port.

`make keystone` (a prerequisite of `make test`) installs it. The session fixture `keystone`
(imported by tests/conftest.py) sets one up in a temporary directory: keystone.conf with
SQLite and fernet keys there, `keystone-manage db_sync`, `fernet_setup`,
`credential_setup` and `bootstrap`, then serves it with gunicorn from the same venv and
creates what the tests use:

- project `demo` with user `alice` (role `member`), project `other` (no one of ours in it);
- project `service` with the service user `troveless` (role `service`: may validate tokens);
- a `database` service; its public endpoint is set by the test that starts the platform
  (`set_endpoint`), as Trove registers `http://HOST:8779/v1.0/%(tenant_id)s`.

A missing install fails the tests, never skips them (as a missing PostgreSQL does).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYSTONE_VENV = Path(os.environ.get("TROVELESS_TEST_KEYSTONE_VENV") or ROOT / ".venv-keystone")
SERVE = Path(__file__).resolve().parent / "serve_keystone.py"
DOMAIN = "Default"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KeystoneServer:
    def __init__(self, venv: Path = KEYSTONE_VENV) -> None:
        self.venv = venv
        self.dir = Path(tempfile.mkdtemp(prefix="troveless-keystone-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_url = f"{self.url}/v3"
        self.conf = self.dir / "keystone.conf"
        self.log_path = self.dir / "keystone.log"
        self.admin_password = secrets.token_hex(12)
        self.passwords = {"alice": secrets.token_hex(12), "troveless": secrets.token_hex(12)}
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin_token: str | None = None
        self.ids: dict[str, str] = {}

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        d = self.dir
        self.conf.write_text(
            "[DEFAULT]\ndebug = false\n"
            f"[database]\nconnection = sqlite:///{d / 'keystone.db'}\n"
            "[token]\nprovider = fernet\nexpiration = 3600\n"
            # bcrypt's cheapest cost: a password check in milliseconds, not a quarter second.
            "[identity]\npassword_hash_rounds = 4\n"
            f"[fernet_tokens]\nkey_repository = {d / 'fernet-keys'}\n"
            f"[fernet_receipts]\nkey_repository = {d / 'fernet-receipts'}\n"
            f"[credential]\nkey_repository = {d / 'credential-keys'}\n"
        )
        owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
        # Independent steps run side by side (each is mostly Python start-up).
        self._manage_all([["db_sync"], ["fernet_setup", *owner], ["credential_setup", *owner]])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "python"), str(SERVE), "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "1", "--threads", "4", "--timeout", "60"],
                env={**self._env(), "OS_KEYSTONE_CONFIG_FILES": str(self.conf)},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=d,
            )
        self._manage_all([[
            "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", "RegionOne", "--bootstrap-public-url", self.auth_url,
        ]])
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keystone exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.auth_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"keystone did not answer on {self.auth_url}:\n{self.log()}")
            time.sleep(0.2)
        self._populate()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn's master stops its worker
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "TROVELESS_"))}
        return {**env, "OS_BOOTSTRAP_PASSWORD": self.admin_password}

    def _manage_all(self, commands: list[list[str]]) -> None:
        manage = str(self.venv / "bin" / "keystone-manage")
        running = [
            (argv, subprocess.Popen([manage, "--config-file", str(self.conf), *argv], env=self._env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            for argv in commands
        ]
        for argv, proc in running:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"keystone-manage {argv[0]} failed ({proc.returncode}):\n{out.decode()[-3000:]}")

    # ---- the REST API -----------------------------------------------------------------------

    def password_token(self, user: str, password: str, project: str) -> tuple[str, dict[str, Any]]:
        """A project-scoped token, and its body."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password, "domain": {"name": DOMAIN}}}},
            "scope": {"project": {"name": project, "domain": {"name": DOMAIN}}},
        }}
        r = httpx.post(f"{self.auth_url}/auth/tokens", params={"nocatalog": ""}, json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"], r.json()["token"]

    def user_token(self, user: str = "alice", project: str = "demo") -> str:
        return self.password_token(user, self.passwords[user], project)[0]

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._admin_token is None:
            self._admin_token = self.password_token("admin", self.admin_password, "admin")[0]
        headers = {"X-Auth-Token": self._admin_token, **kw.pop("headers", {})}
        return httpx.request(method, f"{self.auth_url}{path}", headers=headers, timeout=30, **kw)

    def _create(self, path: str, kind: str, body: dict[str, Any]) -> str:
        r = self.admin("POST", path, json={kind: body})
        assert r.status_code == 201, r.text
        return r.json()[kind]["id"]

    def _populate(self) -> None:
        roles = {r["name"]: r["id"] for r in self.admin("GET", "/roles").json()["roles"]}
        domain = "default"
        for project in ("demo", "other", "service"):
            self.ids[project] = self._create("/projects", "project", {"name": project, "domain_id": domain})
        for user, project, role in (("alice", "demo", "member"), ("troveless", "service", "service")):
            self.ids[user] = self._create("/users", "user", {"name": user, "domain_id": domain,
                                                            "password": self.passwords[user]})
            r = self.admin("PUT", f"/projects/{self.ids[project]}/users/{self.ids[user]}/roles/{roles[role]}")
            assert r.status_code == 204, r.text
        self.ids["database"] = self._create("/services", "service", {"type": "database", "name": "trove"})

    def set_endpoint(self, service: str, url: str, interface: str = "public") -> None:
        """Point the catalog's `service` endpoint at `url` (replacing any before)."""
        service_id = self.ids[service]
        for endpoint in self.admin("GET", "/endpoints", params={"service_id": service_id}).json()["endpoints"]:
            assert self.admin("DELETE", f"/endpoints/{endpoint['id']}").status_code == 204
        self._create("/endpoints", "endpoint", {"service_id": service_id, "interface": interface, "url": url,
                                                "region_id": "RegionOne"})

    def revoke(self, token: str) -> None:
        r = self.admin("DELETE", "/auth/tokens", headers={"X-Subject-Token": token})
        assert r.status_code == 204, r.text

    def short_lived_token(self, user: str, project: str, seconds: float) -> tuple[str, float]:
        """A token that expires in about `seconds` (Keystone caps a token's expiry at its
        application credential's), and its expiry as a Unix time."""
        password = self.passwords[user]
        token = self.password_token(user, password, project)[0]
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        r = httpx.post(f"{self.auth_url}/users/{self.ids[user]}/application_credentials",
                       headers={"X-Auth-Token": token}, timeout=30,
                       json={"application_credential": {"name": f"short-{secrets.token_hex(4)}",
                                                        "expires_at": until.strftime("%Y-%m-%dT%H:%M:%S.%f")}})
        assert r.status_code == 201, r.text
        credential = r.json()["application_credential"]
        r = httpx.post(f"{self.auth_url}/auth/tokens", timeout=30, json={"auth": {"identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": credential["id"], "secret": credential["secret"]}}}})
        assert r.status_code == 201, r.text
        expires = dt.datetime.fromisoformat(r.json()["token"]["expires_at"])
        return r.headers["X-Subject-Token"], expires.timestamp()

    def service_env(self, cache_ttl_s: float = 60) -> dict[str, str]:
        """The platform's TROVELESS_* settings for Keystone auth with our service user."""
        return {
            "TROVELESS_AUTH": "keystone",
            "TROVELESS_KEYSTONE_URL": self.auth_url,
            "TROVELESS_KEYSTONE_USERNAME": "troveless",
            "TROVELESS_KEYSTONE_PASSWORD": self.passwords["troveless"],
            "TROVELESS_KEYSTONE_PROJECT": "service",
            "TROVELESS_KEYSTONE_CACHE_TTL": str(cache_ttl_s),
        }


@pytest.fixture(scope="session")
def keystone() -> Iterator[KeystoneServer]:
    if not (KEYSTONE_VENV / "bin" / "keystone-manage").exists():
        pytest.fail(f"Keystone is not installed in {KEYSTONE_VENV}: run `make keystone` (make test does)")
    server = KeystoneServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
