"""Workflow step commands: one CloudEvent type per (workflow, step), one payload model."""

from __future__ import annotations

from typing import ClassVar, Literal

from events.base import PREFIX, Event

Phase = Literal["forward", "compensate"]


def step_type(workflow: str, step: str) -> str:
    """`troveless.step.<workflow>.<step>`: the type a step function's Trigger filters on."""
    return f"{PREFIX}.step.{workflow}.{step}"


class StepRequested(Event):
    """Run (or compensate) one attempt of one step of one workflow run."""

    TYPE_PREFIX: ClassVar[str] = f"{PREFIX}.step."

    run_id: str
    workflow: str
    step: str
    attempt: int
    phase: Phase = "forward"

    def event_type(self) -> str:
        return step_type(self.workflow, self.step)

    def event_id(self) -> str:
        """Deterministic id: a re-emission of the same attempt is recognised as a duplicate."""
        return f"{self.run_id}:{self.step}:{self.phase}:{self.attempt}"
