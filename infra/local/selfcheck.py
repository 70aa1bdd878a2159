"""Start the `selfcheck` workflow and wait for it: proof that events flow end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass

from functions.core.models.platform import WorkflowRun
from functions.core.workflow import RunStatus


@dataclass(frozen=True)
class SelfcheckResult:
    run_id: str
    status: str
    seconds: float
    error: str | None


def run_selfcheck(timeout_s: float = 30.0) -> SelfcheckResult:
    from functions.runtime import runtime, unit_of_work
    from functions.tasks.selfcheck import SELFCHECK

    started = time.perf_counter()
    with unit_of_work() as work:
        run, first = SELFCHECK.start(work.session)
        work.emit([first])
        run_id = run.id
    deadline = started + timeout_s
    status, error = RunStatus.RUNNING.value, None
    while time.perf_counter() < deadline:
        with runtime().sessions() as session:
            row = session.get(WorkflowRun, run_id)
            assert row is not None
            status, error = row.status, row.error
        if status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            break
        time.sleep(0.05)
    return SelfcheckResult(run_id, status, time.perf_counter() - started, error)
