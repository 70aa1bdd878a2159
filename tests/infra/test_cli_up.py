"""`troveless up` as a user runs it: the versions document, the unmodified `openstack`
client against the local token, status, selfcheck, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.infra.platform_helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _troveless(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "troveless"), *args], capture_output=True, text=True, timeout=120, env=env)


def test_up_serves_trove_and_the_openstack_client_works(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TROVELESS_", "OS_"))}
    env["TROVELESS_DATABASE_URL"] = database_url
    port = _free_port()
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "troveless"), "up", "--data-dir", str(data_dir), "--port", str(port),
         "--ingress-port", str(_free_port()), "--functions-port", str(_free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.get(base + "/").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(serving, timeout_s=60, what="the gateway")
        versions = httpx.get(base + "/").json()
        assert versions == {
            "versions": [{"id": "v1.0", "status": "CURRENT", "updated": "2012-08-01T00:00:00Z",
                          "links": [{"rel": "self", "href": f"{base}/v1.0/"}]}]
        }
        wait_for(lambda: "event path OK" in (tmp_path / "up.log").read_text(), what="the startup selfcheck")
        banner = (tmp_path / "up.log").read_text()
        assert "--os-auth-type admin_token" in banner

        tokens = json.loads((data_dir / "tokens.json").read_text())
        token = tokens["default"]
        project = tokens["tokens"][token]["project_id"]
        assert (data_dir / "tokens.json").stat().st_mode & 0o077 == 0, "the token file must be private"
        endpoint = f"{base}/v1.0/{project}"
        osc = [str(BIN / "openstack"), "--os-auth-type", "admin_token", "--os-endpoint", endpoint, "--os-token"]
        listed = subprocess.run([*osc, token, "database", "flavor", "list", "-f", "json"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert listed.returncode == 0, listed.stderr
        flavors = json.loads(listed.stdout)
        assert [(f["Name"], f["RAM"]) for f in flavors] == [
            ("d1.tiny", 512), ("d1.small", 1024), ("d1.medium", 2048), ("d1.large", 4096)]
        stores = subprocess.run([*osc, token, "datastore", "list", "-f", "json"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert stores.returncode == 0 and {"postgresql", "mariadb"} <= {d["Name"] for d in json.loads(stores.stdout)}
        refused = subprocess.run([*osc, "wrong-token", "database", "flavor", "list"],
                                 capture_output=True, text=True, timeout=120, env=env)
        assert refused.returncode != 0 and "HTTP 401" in refused.stderr

        status = _troveless("status", "--data-dir", str(data_dir), env=env)
        assert status.returncode == 0 and f"running: pid {proc.pid}" in status.stdout, status.stdout
        check = _troveless("selfcheck", "--data-dir", str(data_dir), env=env)
        assert check.returncode == 0 and "SUCCEEDED" in check.stdout, check.stdout + check.stderr
        second = _troveless("up", "--data-dir", str(data_dir), "--port", str(_free_port()), env=env)
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0, (tmp_path / "up.log").read_text()[-2000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
    after = _troveless("status", "--data-dir", str(data_dir), env=env)
    assert after.returncode == 3 and after.stdout.startswith("not running")
