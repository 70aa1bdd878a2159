"""Helpers to run the local platform in tests and to watch workflow runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from functions.core.models.platform import WorkflowRun, WorkflowStepLog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "platform"
TEST_SPEC = FIXTURES / "serverless.yaml"

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        time.sleep(interval_s)


def records(record_dir: Path, name: str) -> list[dict[str, Any]]:
    path = record_dir / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_state(sessions: sessionmaker[Session], run_id: str) -> dict[str, Any]:
    """Everything a run left in the database, without ids or times: comparable across runs."""
    with sessions() as s:
        run = s.get(WorkflowRun, run_id)
        assert run is not None
        log = s.execute(
            select(WorkflowStepLog.step, WorkflowStepLog.phase, WorkflowStepLog.attempt, WorkflowStepLog.outcome)
            .where(WorkflowStepLog.run_id == run_id)
            .order_by(WorkflowStepLog.id)
        ).all()
        return {
            "status": run.status,
            "step": run.step,
            "context": run.context,
            "completed": run.completed,
            "error": run.error,
            "log": [tuple(row) for row in log],
        }


def finished(sessions: sessionmaker[Session], run_id: str) -> str | None:
    with sessions() as s:
        run = s.get(WorkflowRun, run_id)
        return run.status if run is not None and run.status in ("SUCCEEDED", "FAILED") else None
