"""serverless.yaml is consistent with the code: targets, signatures, routes and event flow."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import yaml
from functions_framework import _function_registry
from pydantic import ValidationError

from events import registry
from functions.core.workflow import Workflow
from infra.spec import Spec, load_spec
from tests.infra.platform_helpers import TEST_SPEC

SPECS = {"product": None, "tests": TEST_SPEC}


def _load_module(path: Path):  # type: ignore[no-untyped-def]
    """Load a source file the way functions-framework does (by file stem, from its path)."""
    module, spec = _function_registry.load_function_module(str(path))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=list(SPECS))
def spec(request) -> Spec:  # type: ignore[no-untyped-def]
    return load_spec(SPECS[request.param])


def test_every_target_exists_with_the_declared_signature(spec: Spec) -> None:
    for name, fn in spec.functions.items():
        source = spec.source_path(name)
        assert source.exists(), f"{name}: {source} does not exist"
        module = _load_module(source)
        target = getattr(module, fn.target, None)
        assert inspect.isfunction(target), f"{name}: {fn.target} is not a function in {source}"
        registered = _function_registry.REGISTRY_MAP.get(fn.target)
        assert registered == fn.signature, f"{name}: decorated as {registered!r}, declared {fn.signature!r}"
        assert len(inspect.signature(target).parameters) == 1, f"{name}: takes one request/event argument"


def test_http_functions_serve_the_route_the_spec_declares(spec: Spec) -> None:
    for name, fn in spec.by_kind("http").items():
        target = getattr(_load_module(spec.source_path(name)), fn.target)
        assert fn.trigger.http is not None
        declared = (fn.trigger.http.method, fn.trigger.http.path)
        assert getattr(target, "route", None) == declared, f"{name}: code serves {getattr(target, 'route', None)}"


def test_every_emitted_type_has_a_consumer(spec: Spec) -> None:
    consumed = spec.consumed_types
    for name, fn in spec.functions.items():
        for emitted in fn.emits:
            if emitted.endswith("*"):
                prefix = emitted[:-1]
                assert any(t.startswith(prefix) for t in consumed), f"{name} emits {emitted}: no consumer"
            else:
                assert emitted in consumed, f"{name} emits {emitted!r} but no function consumes it"
                registry.model_for(emitted)  # and it is a known event type


def test_workflow_step_functions_declare_every_event_they_can_reply(spec: Spec) -> None:
    """A step replies with the next step (forward) or an earlier step (compensation)."""
    for name, fn in spec.by_kind("event").items():
        assert fn.trigger.event is not None
        if not fn.trigger.event.type.startswith("troveless.step."):
            continue
        module = _load_module(spec.source_path(name))
        workflow_name, step_name = fn.trigger.event.type.split(".")[2:4]
        [workflow] = [w for w in vars(module).values() if isinstance(w, Workflow) and w.name == workflow_name]
        names = [s.name for s in workflow.steps]
        index = names.index(step_name)
        possible = set()
        if index + 1 < len(names):
            possible.add(f"troveless.step.{workflow_name}.{names[index + 1]}")
        if step_name == names[0] and workflow.steps[0].compensate is None and index + 1 == len(names):
            possible.clear()
        for earlier in workflow.steps[:index]:
            if earlier.compensate is not None:
                possible.add(f"troveless.step.{workflow_name}.{earlier.name}")
        missing = possible - set(fn.emits)
        assert not missing, f"{name} can reply {sorted(missing)} but does not declare it in emits"
        for emitted in possible:
            assert emitted in spec.consumed_types


def test_module_stems_are_unique_and_shadow_nothing(spec: Spec) -> None:
    """functions-framework loads each source as a top-level module named after its file."""
    stems: dict[str, Path] = {}
    for name in spec.functions:
        path = spec.source_path(name)
        stem = path.stem
        assert stems.setdefault(stem, path) == path, f"two sources share the module name {stem!r}"
        assert stem not in sys.stdlib_module_names, f"{path} would shadow the standard library"
        if stem not in sys.modules:
            assert importlib.util.find_spec(stem) is None, f"{path} would shadow the installed {stem!r}"


def _spec_with(**changes) -> dict:  # type: ignore[no-untyped-def,type-arg]
    raw = yaml.safe_load(Path(TEST_SPEC).read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return {**raw, "base_dir": Path(TEST_SPEC).parent}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"functions__bounce__target": "always_fail"}, "share target"),
        ({"functions__bounce__trigger": {"http": {"method": "GET", "path": "/"}}}, "both serve GET /"),
        ({"functions__bounce__trigger": {"schedule": {"cron": "every minute"}}}, "5-field cron"),
        ({"functions__bounce__trigger": {"event": {"type": "x", "delivery": {"timeout": "30s"}}}}, "ISO-8601"),
        ({"functions__bounce__trigger": {}}, "exactly one of"),
        ({"defaults__delivery__deadLetterSink": "bounce"}, "not a declared sink function"),
        ({"functions__bounce__trigger": {"event": {"type": "x", "attributes": {"Bad-Name": "y"}}}}, "attribute name"),
        ({"functions__bounce__surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        Spec.model_validate(_spec_with(**change))
