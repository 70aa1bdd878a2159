"""Kill the whole platform (SIGKILL) at a random moment of `instance create`, 20 times in a
row: every instance still ends ACTIVE, or ERROR with a fault and nothing leaked, and none
stays in BUILD past its deadline."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest

from functions.core.provisioning import PREPARE_DEADLINE_S
from tests.e2e.platform import LocalPlatform
from tests.infra.platform_helpers import wait_for

ROUNDS = 20


@pytest.fixture
def platform(database_url: str) -> Iterator[LocalPlatform]:
    p = LocalPlatform(database_url)
    try:
        p.start()
        yield p
    finally:
        p.cleanup()


def _body(n: int) -> dict:  # type: ignore[type-arg]
    return {"instance": {"name": f"chaos-{n}", "flavorRef": "1", "volume": {"size": 1},
                         "datastore": {"type": "postgresql"}, "databases": [{"name": "app"}],
                         "users": [{"name": "alice", "password": "secret", "databases": [{"name": "app"}]}]}}


def test_sigkill_at_a_random_moment_of_create(platform: LocalPlatform) -> None:
    rng = random.Random(20261122)
    outcomes = []
    for n in range(ROUNDS):
        r = platform.api("POST", "/instances", json=_body(n))
        assert r.status_code == 200, r.text
        instance_id = r.json()["instance"]["id"]
        created = time.monotonic()
        time.sleep(rng.uniform(0.0, 3.0))  # somewhere between the first step and ACTIVE
        platform.kill()
        platform.start()

        def settled() -> dict | None:  # type: ignore[type-arg]
            inst = platform.show(instance_id)
            assert inst is not None
            return inst if inst["status"] in ("ACTIVE", "ERROR") else None

        inst = wait_for(settled, timeout_s=PREPARE_DEADLINE_S + 60, interval_s=0.2, what=f"round {n}")
        assert time.monotonic() - created < PREPARE_DEADLINE_S + 60
        directory = platform.data_dir / "instances" / instance_id
        if inst["status"] == "ERROR":
            assert inst["fault"]["message"], inst
            assert not directory.exists(), f"round {n}: a failed build left {directory}"
        else:
            assert inst["operating_status"] == "HEALTHY"
        outcomes.append(inst["status"])
        # Delete it so the next round starts clean, and check that nothing is left.
        assert platform.api("DELETE", f"/instances/{instance_id}").status_code == 202
        wait_for(lambda: platform.show(instance_id) is None, timeout_s=60, what=f"round {n} delete")
        assert not directory.exists()
    assert len(outcomes) == ROUNDS
    print(json.dumps({"ACTIVE": outcomes.count("ACTIVE"), "ERROR": outcomes.count("ERROR")}))
