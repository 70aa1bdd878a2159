"""The event-type registry: type -> payload model, and refusal of anything else."""

from __future__ import annotations

import uuid
from typing import ClassVar

import pytest

from events import registry
from events.base import Event
from events.envelope import new_message
from events.errors import InvalidEventData, PermanentEventError, UnknownEventType
from events.schedule import PING_SOURCE_PREFIX, ScheduleTick
from events.workflow import StepRequested, step_type


def _unique_type() -> str:
    return f"troveless.test.{uuid.uuid4().hex}"


def test_step_requested_family_is_parsed() -> None:
    step = StepRequested(run_id="run-1", workflow="create_instance", step="allocate", attempt=2)
    msg = step.to_message("/troveless/workflows")
    assert msg.type == "troveless.step.create_instance.allocate" == step_type("create_instance", "allocate")
    parsed = registry.parse(msg)
    assert isinstance(parsed, StepRequested)
    assert parsed == step
    assert parsed.phase == "forward"
    assert "troveless.step." in registry.known_families()


def test_step_requested_compensate_phase() -> None:
    step = StepRequested(run_id="r", workflow="w", step="s", attempt=1, phase="compensate")
    parsed = registry.parse(step.to_message("/x"))
    assert isinstance(parsed, StepRequested) and parsed.phase == "compensate"


def test_schedule_tick_is_parsed_and_keeps_extra_data() -> None:
    msg = new_message(ScheduleTick.TYPE, PING_SOURCE_PREFIX + "sweep-workflows", {"job": "sweep"})
    parsed = registry.parse(msg)
    assert isinstance(parsed, ScheduleTick)
    assert parsed.model_dump() == {"job": "sweep"}
    assert "dev.knative.sources.ping" in registry.known_types()


def test_schedule_tick_without_data() -> None:
    msg = new_message(ScheduleTick.TYPE, PING_SOURCE_PREFIX + "x", None)
    assert isinstance(registry.parse(msg), ScheduleTick)


def test_unknown_type_is_a_permanent_error() -> None:
    event_type = _unique_type()
    with pytest.raises(UnknownEventType) as info:
        registry.parse(new_message(event_type, "/s", {}))
    assert isinstance(info.value, PermanentEventError)
    assert info.value.event_type == event_type
    with pytest.raises(UnknownEventType):
        registry.model_for("troveless.stepX.w.s")


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"run_id": "r", "workflow": "w", "step": "s"},  # attempt missing
        {"run_id": "r", "workflow": "w", "step": "s", "attempt": "many"},
        {"run_id": "r", "workflow": "w", "step": "s", "attempt": 1, "phase": "sideways"},
        {"run_id": "r", "workflow": "w", "step": "s", "attempt": 1, "unexpected": True},
        ["not", "a", "mapping"],
        "a string",
    ],
)
def test_invalid_data_is_refused(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidEventData) as info:
        registry.parse(new_message("troveless.step.w.s", "/s", data))
    assert isinstance(info.value, PermanentEventError)


@pytest.mark.parametrize("event_type", ["troveless.step.other.s", "troveless.step.w.other"])
def test_step_data_must_match_its_type(event_type: str) -> None:
    data = StepRequested(run_id="r", workflow="w", step="s", attempt=1).model_dump(mode="json")
    with pytest.raises(InvalidEventData):
        registry.parse(new_message(event_type, "/s", data))


def test_register_exact_type_and_parse() -> None:
    event_type = _unique_type()

    class Probe(Event):
        TYPE: ClassVar[str] = event_type
        value: int

    assert registry.register(Probe) is Probe
    assert registry.register(Probe) is Probe  # idempotent for the same model
    parsed = registry.parse(Probe(value=3).to_message("/s"))
    assert isinstance(parsed, Probe) and parsed.value == 3
    assert event_type in registry.known_types()


def test_registering_a_type_twice_with_another_model_fails() -> None:
    event_type = _unique_type()

    class First(Event):
        TYPE: ClassVar[str] = event_type

    class Second(Event):
        TYPE: ClassVar[str] = event_type

    registry.register(First)
    with pytest.raises(ValueError):
        registry.register(Second)
    assert registry.model_for(event_type) is First


def test_registering_a_model_without_type_fails() -> None:
    class Nameless(Event):
        pass

    with pytest.raises(ValueError):
        registry.register(Nameless)


def test_step_event_id_is_deterministic() -> None:
    a = StepRequested(run_id="run-1", workflow="w", step="s", attempt=3)
    b = StepRequested(run_id="run-1", workflow="w", step="s", attempt=3)
    assert a.event_id() == b.event_id() == "run-1:s:forward:3"
    assert a.event_id() != StepRequested(run_id="run-1", workflow="w", step="s", attempt=4).event_id()
    assert (
        a.event_id()
        != StepRequested(run_id="run-1", workflow="w", step="s", attempt=3, phase="compensate").event_id()
    )
    assert a.to_message("/s", id=a.event_id()).id == "run-1:s:forward:3"


def test_event_models_are_frozen() -> None:
    step = StepRequested(run_id="r", workflow="w", step="s", attempt=1)
    with pytest.raises(ValueError):
        step.attempt = 2  # type: ignore[misc]
