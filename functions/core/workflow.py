"""Declared workflows ("step functions") and the runner every step function calls.

A workflow is an ordered list of steps, each with a retry policy, a timeout and an optional
compensation. A `workflow_runs` row holds the current step, attempt, deadline and context.
Every step function, for each CloudEvent it receives, in ONE transaction:

1. claims (consumer, source, id) in the inbox: a duplicate gets the stored reply back;
2. locks the run row and checks it still expects this step, phase and attempt (else: stale, ack);
3. runs the step's effect inside a savepoint;
4. advances the run and returns the next step's event (the Knative reply).

Failures: an exception is transient (retried after backoff, the sweeper re-emits the next
attempt when due); `StepFailed` is permanent. A step past its deadline, or out of retries,
starts compensation: the failing step, then the completed steps in reverse order, each
through its own step function. The run ends SUCCEEDED or FAILED with a recorded reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message
from events.errors import PermanentEventError
from events.workflow import Phase, StepRequested
from functions.core import inbox, metrics
from functions.core.models.base import utcnow
from functions.core.models.platform import WorkflowRun, WorkflowStepLog

log = logging.getLogger("troveless.workflow")

SOURCE_PREFIX = "/troveless/workflows/"
# How long the sweeper waits before re-emitting a step event nobody acted on.
SWEEP_REDELIVER_S = 15.0


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPENSATING = "COMPENSATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def active(self) -> bool:
        return self in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.COMPENSATING)


ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.COMPENSATING)


class Outcome(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    WAITING = "WAITING"
    RESUMED = "RESUMED"
    RETRY = "RETRY"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


class StepFailed(Exception):
    """A permanent failure: retrying the step cannot help."""


class UnknownRun(PermanentEventError):
    pass


@dataclass(frozen=True)
class Retry:
    """ASL-style retrier: `attempts` in total, delay = interval * rate^(n-1), capped."""

    attempts: int = 3
    interval_s: float = 1.0
    backoff_rate: float = 2.0
    max_delay_s: float = 60.0

    def delay_s(self, failed_attempt: int) -> float:
        return min(self.interval_s * self.backoff_rate ** (failed_attempt - 1), self.max_delay_s)


@dataclass(frozen=True)
class Wait:
    """Returned by a step that started something and waits for an external event
    (resumed by `resume`); past `timeout_s` (default: the step's timeout) it is compensated."""

    timeout_s: float | None = None


@dataclass
class StepContext:
    """What a step sees: the transaction, the run's identity and its mutable context."""

    session: Session
    run_id: str
    workflow: str
    step: str
    attempt: int
    resource_id: str | None
    context: dict[str, Any]
    now: dt.datetime


StepHandler = Callable[[StepContext], "Wait | None"]


@dataclass(frozen=True)
class Step:
    name: str
    run: StepHandler
    compensate: StepHandler | None = None
    retry: Retry = field(default_factory=Retry)
    timeout_s: float = 60.0
    redeliver_after_s: float = 30.0


FailureHook = Callable[[Session, WorkflowRun], None]


class Workflow:
    def __init__(self, name: str, steps: Sequence[Step], *, on_failure: FailureHook | None = None) -> None:
        if not steps:
            raise ValueError(f"workflow {name!r} has no steps")
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow {name!r} has duplicate step names")
        self.name = name
        self.on_failure = on_failure
        self.steps = tuple(steps)
        self._by_name = {s.name: s for s in steps}

    def step(self, name: str) -> Step:
        try:
            return self._by_name[name]
        except KeyError:
            raise PermanentEventError(f"workflow {self.name!r} has no step {name!r}") from None

    def after(self, name: str) -> Step | None:
        index = self.steps.index(self.step(name))
        return self.steps[index + 1] if index + 1 < len(self.steps) else None

    def start(
        self,
        session: Session,
        *,
        resource_id: str | None = None,
        context: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[WorkflowRun, Message]:
        """Create a run at its first step; the caller writes the message to the outbox.

        A run started by an API request remembers who asked, from where, under which
        request id (`context["request"]`): its notifications report them, as Trove's do."""
        from functions.core.context import current_request

        now = now or utcnow()
        first = self.steps[0]
        context = dict(context or {})
        request = current_request()
        if request is not None:
            context.setdefault("request", request.traits())
        run = WorkflowRun(
            workflow=self.name,
            resource_id=resource_id,
            status=RunStatus.RUNNING,
            step=first.name,
            attempt=1,
            context=context,
            completed=[],
            deadline_at=now + dt.timedelta(seconds=first.timeout_s),
            next_run_at=now + dt.timedelta(seconds=first.redeliver_after_s),
            created_at=now,
        )
        session.add(run)
        session.flush()
        return run, step_message(run, first.name, 1, "forward")


def step_message(run: WorkflowRun, step: str, attempt: int, phase: Phase) -> Message:
    event = StepRequested(run_id=run.id, workflow=run.workflow, step=step, attempt=attempt, phase=phase)
    return event.to_message(
        SOURCE_PREFIX + run.workflow,
        subject=run.id,
        id=event.event_id(),
        extensions={"workflowid": run.id, "partitionkey": run.resource_id},
    )


def consumer_name(workflow: str, step: str) -> str:
    return f"step:{workflow}.{step}"


def execute(session: Session, workflow: Workflow, message: Message, event: StepRequested) -> Message | None:
    """Handle one step event; returns the reply (next step's event) or None."""
    if event.workflow != workflow.name:
        raise PermanentEventError(f"event for workflow {event.workflow!r} sent to {workflow.name!r}")
    step = workflow.step(event.step)
    consumer = consumer_name(workflow.name, step.name)
    duplicate = inbox.claim(session, consumer, message)
    if duplicate is not None:
        log.info("duplicate %s: answered with the stored reply", message.id)
        metrics.mark_event("duplicate")
        return duplicate.reply
    run = _lock_run(session, event.run_id)
    expected = RunStatus.RUNNING if event.phase == "forward" else RunStatus.COMPENSATING
    if run.status != expected or run.step != step.name or run.attempt != event.attempt:
        log.info("stale %s: run %s is %s at %s attempt %s", message.id, run.id, run.status, run.step, run.attempt)
        metrics.mark_event("stale")
        return None
    now = utcnow()
    if event.phase == "forward":
        reply = _forward(session, workflow, run, step, now)
    else:
        reply = _compensate(session, workflow, run, step, now)
    inbox.store_reply(session, consumer, message, reply)
    return reply


def _lock_run(session: Session, run_id: str) -> WorkflowRun:
    run = session.execute(
        select(WorkflowRun).where(WorkflowRun.id == run_id).with_for_update()
    ).scalar_one_or_none()
    if run is None:
        raise UnknownRun(f"no workflow run {run_id}")
    return run


def _context(session: Session, run: WorkflowRun, step: Step, now: dt.datetime) -> StepContext:
    return StepContext(
        session=session,
        run_id=run.id,
        workflow=run.workflow,
        step=step.name,
        attempt=run.attempt,
        resource_id=run.resource_id,
        context=dict(run.context or {}),
        now=now,
    )


def _forward(session: Session, workflow: Workflow, run: WorkflowRun, step: Step, now: dt.datetime) -> Message | None:
    if run.deadline_at is not None and now > run.deadline_at:
        reason = f"step {step.name!r} timed out: its deadline {run.deadline_at.isoformat()} passed before it ran"
        _record(session, run, step.name, "forward", Outcome.TIMED_OUT, now, reason)
        return _begin_compensation(session, workflow, run, step, reason, now)
    ctx = _context(session, run, step, now)
    savepoint = session.begin_nested()
    try:
        outcome = step.run(ctx)
        # Flush inside the savepoint: a database error in the step's effect is the step's
        # failure (retried or compensated), not a crash of the whole delivery.
        session.flush()
    except StepFailed as exc:
        savepoint.rollback()
        reason = f"step {step.name!r} failed: {exc}"
        _record(session, run, step.name, "forward", Outcome.FAILED, now, reason)
        return _begin_compensation(session, workflow, run, step, reason, now)
    except Exception as exc:  # transient by default: retried with backoff
        savepoint.rollback()
        log.warning("step %s of run %s attempt %s failed: %s", step.name, run.id, run.attempt, exc)
        return _retry_or_fail(session, workflow, run, step, f"{type(exc).__name__}: {exc}", now)
    finished = utcnow()
    if run.deadline_at is not None and finished > run.deadline_at:
        # Its effect is rolled back: a step that overran must not leave half-work behind.
        savepoint.rollback()
        elapsed = (finished - now).total_seconds()
        reason = f"step {step.name!r} timed out: it ran {elapsed:.1f}s, its timeout is {step.timeout_s:g}s"
        _record(session, run, step.name, "forward", Outcome.TIMED_OUT, now, reason)
        return _begin_compensation(session, workflow, run, step, reason, finished)
    savepoint.commit()
    run.context = ctx.context
    if isinstance(outcome, Wait):
        timeout = outcome.timeout_s if outcome.timeout_s is not None else step.timeout_s
        run.status = RunStatus.WAITING
        run.deadline_at = finished + dt.timedelta(seconds=timeout)
        run.next_run_at = run.deadline_at
        _record(session, run, step.name, "forward", Outcome.WAITING, now)
        return None
    _record(session, run, step.name, "forward", Outcome.SUCCEEDED, now)
    return _advance(workflow, run, step, finished)


def _advance(workflow: Workflow, run: WorkflowRun, step: Step, now: dt.datetime) -> Message | None:
    run.completed = [*(run.completed or []), step.name]
    following = workflow.after(step.name)
    if following is None:
        run.status = RunStatus.SUCCEEDED
        run.step = None
        run.deadline_at = run.next_run_at = None
        run.finished_at = now
        log.info("run %s of %s SUCCEEDED", run.id, workflow.name)
        return None
    run.status = RunStatus.RUNNING
    run.step = following.name
    run.attempt = 1
    run.deadline_at = now + dt.timedelta(seconds=following.timeout_s)
    run.next_run_at = now + dt.timedelta(seconds=following.redeliver_after_s)
    return step_message(run, following.name, 1, "forward")


def _retry_or_fail(
    session: Session, workflow: Workflow, run: WorkflowRun, step: Step, error: str, now: dt.datetime
) -> Message | None:
    if run.attempt >= step.retry.attempts:
        reason = f"step {step.name!r} failed after {run.attempt} attempt(s): {error}"
        _record(session, run, step.name, "forward", Outcome.FAILED, now, error)
        return _begin_compensation(session, workflow, run, step, reason, now)
    _record(session, run, step.name, "forward", Outcome.RETRY, now, error)
    delay = step.retry.delay_s(run.attempt)
    run.attempt += 1
    run.error = f"attempt {run.attempt - 1} of step {step.name!r} failed: {error}"
    run.next_run_at = now + dt.timedelta(seconds=delay)
    run.deadline_at = run.next_run_at + dt.timedelta(seconds=step.timeout_s)
    if delay <= 0:
        return step_message(run, step.name, run.attempt, "forward")
    return None  # the sweeper emits the next attempt when it is due


def _begin_compensation(
    session: Session, workflow: Workflow, run: WorkflowRun, failed: Step, reason: str, now: dt.datetime
) -> Message | None:
    """Compensate the failed step itself (it may have left an external effect half-done),
    then every completed step, newest first."""
    log.warning("run %s of %s: %s; compensating", run.id, workflow.name, reason)
    run.error = reason
    run.status = RunStatus.COMPENSATING
    if failed.compensate is not None:
        return _compensate_next(run, failed, now)
    return _next_compensation(session, workflow, run, now)


def _compensate(session: Session, workflow: Workflow, run: WorkflowRun, step: Step, now: dt.datetime) -> Message | None:
    if step.compensate is not None:
        ctx = _context(session, run, step, now)
        savepoint = session.begin_nested()
        try:
            step.compensate(ctx)
            session.flush()
        except Exception as exc:
            savepoint.rollback()
            error = f"{type(exc).__name__}: {exc}"
            if run.attempt < step.retry.attempts:
                _record(session, run, step.name, "compensate", Outcome.RETRY, now, error)
                run.next_run_at = now + dt.timedelta(seconds=step.retry.delay_s(run.attempt))
                run.attempt += 1
                return None
            _record(session, run, step.name, "compensate", Outcome.COMPENSATION_FAILED, now, error)
            run.error = f"{run.error}; compensation of step {step.name!r} failed: {error} (needs an operator)"
            return _finish_failed(session, workflow, run, now)
        savepoint.commit()
        run.context = ctx.context
        _record(session, run, step.name, "compensate", Outcome.COMPENSATED, now)
    return _next_compensation(session, workflow, run, now)


def _next_compensation(session: Session, workflow: Workflow, run: WorkflowRun, now: dt.datetime) -> Message | None:
    stack = list(run.completed or [])
    while stack:
        step = workflow.step(stack.pop())
        if step.compensate is not None:
            run.completed = stack
            return _compensate_next(run, step, now)
    run.completed = []
    return _finish_failed(session, workflow, run, now)


def _compensate_next(run: WorkflowRun, step: Step, now: dt.datetime) -> Message:
    run.step = step.name
    run.attempt = 1
    run.deadline_at = None
    run.next_run_at = now + dt.timedelta(seconds=step.redeliver_after_s)
    return step_message(run, step.name, 1, "compensate")


def _finish_failed(session: Session, workflow: Workflow, run: WorkflowRun, now: dt.datetime) -> None:
    run.status = RunStatus.FAILED
    run.step = None
    run.deadline_at = run.next_run_at = None
    run.finished_at = now
    log.warning("run %s of %s FAILED: %s", run.id, workflow.name, run.error)
    if workflow.on_failure is not None:
        workflow.on_failure(session, run)


def cancel(session: Session, run_id: str, reason: str) -> bool:
    """Stop an active run where it is (no compensation: the canceller owns the cleanup).
    Waits for a step that is running right now, since it holds the run's lock."""
    run = _lock_run(session, run_id)
    if not RunStatus(run.status).active:
        return False
    run.status = RunStatus.CANCELLED
    run.error = reason
    run.deadline_at = run.next_run_at = None
    run.finished_at = utcnow()
    return True


def active_runs(session: Session, resource_id: str, workflows: Sequence[str]) -> list[WorkflowRun]:
    return list(
        session.execute(
            select(WorkflowRun).where(
                WorkflowRun.resource_id == resource_id,
                WorkflowRun.workflow.in_(workflows),
                WorkflowRun.status.in_(ACTIVE_STATUSES),
            )
        ).scalars()
    )


def resume(
    session: Session,
    workflow: Workflow,
    run_id: str,
    step: str,
    updates: dict[str, Any] | None = None,
) -> Message | None:
    """Complete a WAITING step (the awaited event arrived); returns the next step's event.
    Anything but a run waiting at `step` is ignored, so a late or repeated signal is harmless."""
    run = _lock_run(session, run_id)
    if run.status != RunStatus.WAITING or run.step != step:
        return None
    now = utcnow()
    run.context = {**(run.context or {}), **(updates or {})}
    _record(session, run, step, "forward", Outcome.RESUMED, now)
    return _advance(workflow, run, workflow.step(step), now)


def fail_waiting(session: Session, workflow: Workflow, run_id: str, step: str, reason: str) -> Message | None:
    """Fail a WAITING step now (the awaited thing reported failure): compensation starts
    with `reason` as the run's error. Anything but a run waiting at `step` is ignored."""
    run = _lock_run(session, run_id)
    if run.status != RunStatus.WAITING or run.step != step:
        return None
    now = utcnow()
    _record(session, run, step, "forward", Outcome.FAILED, now, reason)
    return _begin_compensation(session, workflow, run, workflow.step(step), reason, now)


def extend_wait(
    session: Session, run_id: str, step: str, timeout_s: float, *, now: dt.datetime | None = None
) -> bool:
    """Move a WAITING step's deadline to `now + timeout_s` (a sign of life pushes it out; a
    sign of death pulls it in). Anything but a run waiting at `step` is left alone."""
    run = _lock_run(session, run_id)
    if run.status != RunStatus.WAITING or run.step != step:
        return False
    run.deadline_at = (now or utcnow()) + dt.timedelta(seconds=timeout_s)
    run.next_run_at = run.deadline_at
    return True


def sweep(session: Session, *, now: dt.datetime | None = None, limit: int = 200) -> list[Message]:
    """Re-emit due step events, and start compensation of runs past their deadline.

    Needs no workflow definitions: the compensation event goes to the current step's own
    function, which knows how to continue. Rows locked by a running step are skipped.
    """
    now = now or utcnow()
    runs = session.execute(
        select(WorkflowRun)
        .where(
            WorkflowRun.status.in_([RunStatus.RUNNING, RunStatus.WAITING, RunStatus.COMPENSATING]),
            WorkflowRun.next_run_at <= now,
        )
        .order_by(WorkflowRun.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars()
    out: list[Message] = []
    for run in runs:
        overdue = run.deadline_at is not None and now > run.deadline_at
        if run.status in (RunStatus.RUNNING, RunStatus.WAITING) and overdue:
            reason = f"step {run.step!r} timed out: no result by its deadline {run.deadline_at.isoformat()}"
            _record(session, run, run.step or "", "forward", Outcome.TIMED_OUT, now, reason)
            log.warning("run %s of %s: %s; compensating", run.id, run.workflow, reason)
            run.error = reason
            run.status = RunStatus.COMPENSATING
            run.attempt = 1
            run.deadline_at = None
            run.next_run_at = now + dt.timedelta(seconds=SWEEP_REDELIVER_S)
            out.append(step_message(run, run.step or "", 1, "compensate"))
        elif run.status == RunStatus.WAITING:
            run.next_run_at = run.deadline_at
        else:
            phase: Phase = "forward" if run.status == RunStatus.RUNNING else "compensate"
            run.next_run_at = now + dt.timedelta(seconds=SWEEP_REDELIVER_S)
            out.append(step_message(run, run.step or "", run.attempt, phase))
    return out


def _record(
    session: Session,
    run: WorkflowRun,
    step: str,
    phase: str,
    outcome: Outcome,
    started: dt.datetime,
    error: str | None = None,
) -> None:
    session.add(
        WorkflowStepLog(
            run_id=run.id,
            step=step,
            phase=phase,
            attempt=run.attempt,
            outcome=outcome,
            error=error,
            started_at=started,
        )
    )
