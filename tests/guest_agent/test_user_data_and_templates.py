"""Boot-time prepare from user data (the cloud-init path), and data-directory templates."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from events.envelope import to_json
from events.guest import DatabaseSpec, FlavorSpec, GuestStatus, PrepareRequested, UserSpec, sign_command

from .helpers import Agent
from .test_agent_live import VERSIONS, status_of

pytestmark = pytest.mark.slow


def _user_data(agent: Agent, path: Path, *, secret: bytes | None = None) -> None:
    event = PrepareRequested(
        instance_id=agent.instance_id, datastore=agent.datastore, version=VERSIONS[agent.datastore],
        flavor=FlavorSpec(ram_mb=512, vcpus=1), volume_size_gb=1,
        databases=[DatabaseSpec(name="app")], users=[UserSpec(name="alice", password="s3cret", databases=["app"])],
    )
    path.write_text(to_json(sign_command(agent.instance_id, secret or agent.secret, event)))
    path.chmod(0o600)


@pytest.mark.parametrize("datastore", ["postgresql", "mariadb"])
def test_user_data_prepares_at_boot_and_templates_are_reused(make_agent, datastore: str) -> None:  # type: ignore[no-untyped-def]
    templates = Path(tempfile.mkdtemp(prefix="tvga-templates-", dir="/tmp"))
    try:
        first = make_agent(datastore, start=False)
        first.instance_dir.mkdir(parents=True, exist_ok=True)
        user_data = first.root / "user-data.json"
        _user_data(first, user_data)
        first.start("--user-data", str(user_data), "--template-dir", str(templates))
        first.broker.wait_for(first.source, lambda hb: hb.status == GuestStatus.HEALTHY, timeout=60)
        assert not user_data.exists(), "the file carrying initial passwords must be removed"
        [template] = [p for p in templates.iterdir() if not p.name.startswith(".")]
        assert (template / ".complete").exists()

        # A second instance of the same engine, version and size copies the template.
        second = make_agent(datastore, start=False)
        second.instance_dir.mkdir(parents=True, exist_ok=True)
        user_data2 = second.root / "user-data.json"
        _user_data(second, user_data2)
        second.start("--user-data", str(user_data2), "--template-dir", str(templates))
        second.broker.wait_for(second.source, lambda hb: hb.status == GuestStatus.HEALTHY, timeout=60)
        assert "copied from template" in second.log()
        assert status_of(second).status == GuestStatus.HEALTHY

        # User data signed with another key is ignored: the instance stays unprepared.
        third = make_agent(datastore, start=False)
        third.instance_dir.mkdir(parents=True, exist_ok=True)
        forged = third.root / "user-data.json"
        _user_data(third, forged, secret=os.urandom(32))
        third.start("--user-data", str(forged))
        assert status_of(third).status == GuestStatus.NEW
        assert "ignoring user data" in third.log()
        for agent in (first, second, third):
            agent.terminate()
    finally:
        shutil.rmtree(templates, ignore_errors=True)
