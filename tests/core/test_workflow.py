"""The workflow runner, driven directly (no broker): effects once, retries, timeouts,
compensation, waits and the sweeper. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from events import registry
from events.envelope import Message
from functions.core import workflow as runner
from functions.core.models.base import utcnow
from functions.core.models.platform import WorkflowRun
from tests.fixtures.platform.testfns import SLOWPOKE, TRIO
from tests.infra.platform_helpers import run_state

WORKFLOWS = {w.name: w for w in (TRIO, SLOWPOKE)}


@pytest.fixture(autouse=True)
def _records(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TESTFNS_RECORD_DIR", str(tmp_path / "records"))


def start(session_factory, workflow, **context) -> tuple[str, Message]:  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        run, first = workflow.start(s, resource_id="res-1", context=context)
        return run.id, first


def deliver(session_factory, message: Message) -> Message | None:  # type: ignore[no-untyped-def]
    event = registry.parse(message)
    with session_factory.begin() as s:
        return runner.execute(s, WORKFLOWS[event.workflow], message, event)  # type: ignore[attr-defined]


def drive(session_factory, message: Message | None, *, twice: bool = False) -> None:  # type: ignore[no-untyped-def]
    while message is not None:
        reply = deliver(session_factory, message)
        if twice:
            assert deliver(session_factory, message) == reply  # a duplicate gets the same reply
        message = reply


def sweep(session_factory, seconds_from_now: float) -> list[Message]:  # type: ignore[no-untyped-def]
    with session_factory.begin() as s:
        return runner.sweep(s, now=utcnow() + dt.timedelta(seconds=seconds_from_now))


def test_happy_path_applies_each_step_once(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO)
    assert first.type == "troveless.step.trio.a" and first.get("partitionkey") == "res-1"
    drive(session_factory, first)
    state = run_state(session_factory, run_id)
    assert state["status"] == "SUCCEEDED"
    assert state["context"] == {"ran_a": 1, "ran_b": 1, "ran_c": 1}
    assert state["completed"] == ["a", "b", "c"]
    assert [row[3] for row in state["log"]] == ["SUCCEEDED"] * 3


def test_duplicates_are_answered_with_the_same_reply_and_applied_once(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO)
    drive(session_factory, first, twice=True)
    state = run_state(session_factory, run_id)
    assert state["status"] == "SUCCEEDED"
    assert state["context"] == {"ran_a": 1, "ran_b": 1, "ran_c": 1}
    assert len(state["log"]) == 3


def test_stale_attempt_is_acknowledged_without_effect(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO)
    event = registry.parse(first)
    stale = event.model_copy(update={"attempt": 2}).to_message(first.source, id="other-id")  # type: ignore[attr-defined]
    assert deliver(session_factory, stale) is None
    assert run_state(session_factory, run_id)["context"] == {}


def test_permanent_failure_compensates_in_reverse_order(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO, fail_b=True)
    drive(session_factory, first)
    state = run_state(session_factory, run_id)
    assert state["status"] == "FAILED"
    assert state["error"] == "step 'b' failed: b was told to fail"
    assert state["context"] == {"fail_b": True, "ran_a": 1, "undone_b": 1, "undone_a": 1}
    assert [(r[0], r[1], r[3]) for r in state["log"]] == [
        ("a", "forward", "SUCCEEDED"),
        ("b", "forward", "FAILED"),
        ("b", "compensate", "COMPENSATED"),
        ("a", "compensate", "COMPENSATED"),
    ]


def test_transient_failure_is_retried_by_the_sweeper_with_backoff(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO, flaky_a=2)
    assert deliver(session_factory, first) is None  # attempt 1 failed: retry later
    with session_factory() as s:
        run = s.get(WorkflowRun, run_id)
        assert run is not None and run.attempt == 2 and run.status == "RUNNING"
        assert "flaky" in (run.error or "")
    assert sweep(session_factory, 0) == []  # not due yet (0.2 s backoff)
    [second] = sweep(session_factory, 0.3)
    assert registry.parse(second).attempt == 2  # type: ignore[attr-defined]
    assert deliver(session_factory, first) is None  # the old attempt is now stale
    assert deliver(session_factory, second) is None  # attempt 2 fails too: backoff 0.4 s
    assert sweep(session_factory, 0.3) == []
    [third] = sweep(session_factory, 0.5)
    drive(session_factory, third)
    state = run_state(session_factory, run_id)
    assert state["status"] == "SUCCEEDED"
    assert [r[3] for r in state["log"]][:3] == ["RETRY", "RETRY", "SUCCEEDED"]


def test_retries_exhausted_fail_the_run(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO, flaky_b=99)
    message = deliver(session_factory, first)  # a succeeds; b attempt 1 is next
    assert deliver(session_factory, message) is None  # b attempt 1 fails
    [message] = sweep(session_factory, 5)
    assert deliver(session_factory, message) is None  # b attempt 2 fails
    [message] = sweep(session_factory, 5)
    compensate = deliver(session_factory, message)  # b attempt 3 fails: out of retries
    assert compensate is not None and registry.parse(compensate).phase == "compensate"  # type: ignore[attr-defined]
    drive(session_factory, compensate)
    state = run_state(session_factory, run_id)
    assert state["status"] == "FAILED"
    assert state["error"] == "step 'b' failed after 3 attempt(s): RuntimeError: b is flaky (attempt 3)"
    assert state["context"] == {"flaky_b": 99, "ran_a": 1, "undone_b": 1, "undone_a": 1}
    assert [r[3] for r in state["log"]] == ["SUCCEEDED", "RETRY", "RETRY", "FAILED", "COMPENSATED", "COMPENSATED"]


def test_step_over_its_timeout_is_rolled_back_and_compensated(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, SLOWPOKE, sleep_s=1.3)
    drive(session_factory, first)
    state = run_state(session_factory, run_id)
    assert state["status"] == "FAILED"
    assert "step 'slow' timed out: it ran 1." in state["error"] and "timeout is 1s" in state["error"]
    # The overrunning step's own effect was rolled back; both steps were compensated.
    assert state["context"] == {"sleep_s": 1.3, "ran_first": 1, "undone_slow": 1, "undone_first": 1}


def test_sweeper_redelivers_lost_events_and_times_out_stuck_steps(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO)
    # The first event is "lost": nobody delivers it. The sweeper re-emits it, same id.
    assert sweep(session_factory, 1) == []
    [again] = sweep(session_factory, 2.5)
    assert again.id == first.id and again.type == first.type
    # Far past the step's deadline (90 s) the sweeper gives up and compensates instead.
    [compensate] = sweep(session_factory, 200)
    assert registry.parse(compensate).phase == "compensate"  # type: ignore[attr-defined]
    assert deliver(session_factory, first) is None  # late original: stale now
    drive(session_factory, compensate)
    state = run_state(session_factory, run_id)
    assert state["status"] == "FAILED" and "timed out" in state["error"]
    assert state["context"] == {"undone_a": 1}


def test_waiting_step_resumes_on_signal_or_times_out(session_factory) -> None:  # type: ignore[no-untyped-def]
    run_id, first = start(session_factory, TRIO, wait_b=30)
    drive(session_factory, first)
    assert run_state(session_factory, run_id)["status"] == "WAITING"
    with session_factory.begin() as s:
        assert runner.resume(s, TRIO, run_id, "a") is None  # wrong step: ignored
        nxt = runner.resume(s, TRIO, run_id, "b", {"signal": "ready"})
    with session_factory.begin() as s:
        assert runner.resume(s, TRIO, run_id, "b") is None  # repeated signal: ignored
    drive(session_factory, nxt)
    state = run_state(session_factory, run_id)
    assert state["status"] == "SUCCEEDED" and state["context"]["signal"] == "ready"

    run_id, first = start(session_factory, TRIO, wait_b=30)
    drive(session_factory, first)
    assert sweep(session_factory, 10) == []
    [compensate] = sweep(session_factory, 31)
    drive(session_factory, compensate)
    state = run_state(session_factory, run_id)
    assert state["status"] == "FAILED" and "'b' timed out" in state["error"]
    assert state["context"]["undone_b"] == 1 and state["context"]["undone_a"] == 1
