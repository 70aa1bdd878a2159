"""Workflows through the real local platform: chaos, timeouts and a SIGKILL mid-workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from functions.runtime import reset_runtime, runtime, unit_of_work
from infra.local.broker import Chaos
from tests.fixtures.platform.testfns import SLOWPOKE, TRIO
from tests.infra.platform_helpers import TEST_SPEC, finished, records, run_state, wait_for

REPO = Path(__file__).resolve().parents[2]


def start_run(workflow, **context) -> str:  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        run, first = workflow.start(work.session, resource_id="res-1", context=context)
        work.emit([first])
        return run.id


def _comparable(state: dict) -> dict:  # type: ignore[type-arg]
    return {**state, "log": sorted(state["log"])}


def test_chaos_switches_do_not_change_the_outcome(start_platform, record_dir) -> None:  # type: ignore[no-untyped-def]
    outcomes = []
    for chaos in (Chaos(), Chaos(duplicate=1.0, reorder=True, delay_max_s=0.2, seed=7)):
        platform = start_platform(chaos)
        run_ids = [start_run(TRIO), start_run(TRIO, fail_c=True)]
        sessions = runtime().sessions
        for run_id in run_ids:
            wait_for(lambda r=run_id: finished(sessions, r), what=f"run {run_id}")
        outcomes.append([_comparable(run_state(sessions, r)) for r in run_ids])
        platform.stop()
    plain, chaotic = outcomes
    assert plain == chaotic
    ok, failed = plain
    assert ok["status"] == "SUCCEEDED" and ok["context"] == {"ran_a": 1, "ran_b": 1, "ran_c": 1}
    assert failed["status"] == "FAILED"
    assert failed["context"] == {"fail_c": True, "ran_a": 1, "ran_b": 1, "undone_b": 1, "undone_a": 1}
    # Duplicates were delivered (every event twice), yet each step's body ran once per run.
    assert len(records(record_dir, "trio_a")) == 4


def test_step_exceeding_its_timeout_is_compensated_and_the_run_fails(start_platform) -> None:  # type: ignore[no-untyped-def]
    start_platform()
    run_id = start_run(SLOWPOKE, sleep_s=1.5)
    sessions = runtime().sessions
    assert wait_for(lambda: finished(sessions, run_id), what="the slow run") == "FAILED"
    state = run_state(sessions, run_id)
    assert "step 'slow' timed out" in state["error"]
    assert state["context"] == {"sleep_s": 1.5, "ran_first": 1, "undone_slow": 1, "undone_first": 1}


def _up(data_dir: Path, database_url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "infra", "up", "--spec", str(TEST_SPEC), "--data-dir", str(data_dir),
            "--database-url", database_url, "--port", "0", "--ingress-port", "0", "--functions-port", "0",
            "--no-selfcheck",
        ],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(data_dir / "up.log", "ab"),
    )


def _wait_up(data_dir: Path, proc: subprocess.Popen[bytes]) -> dict:  # type: ignore[type-arg]
    def ready() -> dict | None:  # type: ignore[type-arg]
        assert proc.poll() is None, (data_dir / "up.log").read_text()[-3000:]
        try:
            state = json.loads((data_dir / "platform.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if state.get("pid") != proc.pid:
            return None
        return state if httpx.get(state["urls"]["gateway"] + "/").status_code == 200 else None

    return wait_for(ready, timeout_s=60, what="troveless up")


def test_sigkill_between_steps_loses_nothing(database_url, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {**os.environ, "TESTFNS_RECORD_DIR": str(tmp_path / "records"), "TROVELESS_DATA_DIR": str(data_dir)}
    env.pop("TROVELESS_BROKER_URL", None)
    proc = _up(data_dir, database_url, env)
    try:
        _wait_up(data_dir, proc)
        monkeypatch.setenv("TROVELESS_DATABASE_URL", database_url)
        monkeypatch.setenv("TESTFNS_RECORD_DIR", str(tmp_path / "records"))
        # No broker URL here: the platform's outbox relay publishes the first step. (On SQLite
        # step b holds the write lock while it waits for the gate; a relay in this process
        # would wait for that lock instead of getting on with the test.)
        monkeypatch.delenv("TROVELESS_BROKER_URL", raising=False)
        reset_runtime()
        gate = str(tmp_path / "gate")
        run_id = start_run(TRIO, gate_b=gate)
        # Step a is done and step b has started (its transaction is open): kill the platform.
        wait_for(lambda: Path(gate + ".started").exists(), timeout_s=60, what="step b to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        sessions = runtime().sessions
        before = run_state(sessions, run_id)
        assert before["status"] == "RUNNING" and before["step"] == "b" and before["context"] == {"gate_b": gate, "ran_a": 1}

        Path(gate).touch()
        proc = _up(data_dir, database_url, env)
        _wait_up(data_dir, proc)
        assert wait_for(lambda: finished(sessions, run_id), timeout_s=60, what="the run after restart") == "SUCCEEDED"
        after = run_state(sessions, run_id)
        assert after["context"] == {"gate_b": gate, "ran_a": 1, "ran_b": 1, "ran_c": 1}
        assert [r[3] for r in after["log"]] == ["SUCCEEDED"] * 3
        # Nothing left behind, nothing dead-lettered. (An event published just before the kill
        # may still sit in the outbox: the relay re-sends it and the inbox drops the copy.)
        def drained() -> str | None:
            out = subprocess.run(
                [sys.executable, "-m", "infra", "status", "--data-dir", str(data_dir), "--database-url", database_url],
                capture_output=True, text=True, timeout=60, cwd=REPO,
            ).stdout
            return out if "queue: 0 pending deliveries, outbox: 0, dead letters: 0" in out else None

        wait_for(drained, timeout_s=30, interval_s=1, what="queue and outbox to drain")
        assert run_state(sessions, run_id)["context"]["ran_b"] == 1  # the re-sent copy changed nothing
    finally:
        Path(tmp_path / "gate").touch()  # never leave a step waiting on the gate
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                assert proc.wait(timeout=30) == 0, "Ctrl-C must stop the platform cleanly"
            finally:
                if proc.poll() is None:
                    proc.kill()
        reset_runtime()
    assert not (data_dir / "platform.json").exists()
