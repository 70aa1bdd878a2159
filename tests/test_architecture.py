"""Layering rules, checked on the source text (ast), never by importing the modules.

- events/ and guest_agent/ import neither `functions`, `infra` nor `sqlalchemy`;
- events/ does not import `guest_agent` (the wire contract depends on nobody);
- functions/ does not import `infra` (the deployable code does not know its platform);
- objectstore/ imports none of `functions`, `infra`, `guest_agent`, `events`, `sqlalchemy`
  (both the guest agent and the control plane use it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_parts(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return parts


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_parts(path)
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
                if not node.module:
                    # `from . import x`: x may itself be a module
                    found += [(node.lineno, f"{module}.{alias.name}".lstrip(".")) for alias in node.names]
                    continue
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _violations(packages: tuple[str, ...], forbidden: set[str]) -> list[str]:
    problems = []
    for package in packages:
        for path in _python_files(package):
            for line, module in _imports(path):
                if module.split(".")[0] in forbidden:
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module!r}")
    return problems


@pytest.mark.parametrize("package", ["events", "guest_agent", "functions"])
def test_packages_exist_and_parse(package: str) -> None:
    files = _python_files(package)
    assert files, f"no Python files under {package}/"
    for path in files:
        _imports(path)  # raises SyntaxError naming the file


def test_events_and_guest_agent_do_not_import_control_plane_or_sqlalchemy() -> None:
    problems = _violations(("events", "guest_agent"), {"functions", "infra", "sqlalchemy"})
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_events_does_not_import_guest_agent() -> None:
    problems = _violations(("events",), {"guest_agent"})
    assert not problems, "events/ must not depend on guest_agent:\n" + "\n".join(problems)


def test_functions_do_not_import_infra() -> None:
    problems = _violations(("functions",), {"infra"})
    assert not problems, "functions/ must not depend on infra:\n" + "\n".join(problems)


def test_objectstore_depends_on_no_other_package() -> None:
    assert _python_files("objectstore"), "no Python files under objectstore/"
    problems = _violations(("objectstore",), {"functions", "infra", "guest_agent", "events", "sqlalchemy"})
    assert not problems, "objectstore/ must depend on nobody:\n" + "\n".join(problems)


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that silently finds nothing."""
    imports = {m for _, m in _imports(ROOT / "events" / "registry.py")}
    assert {"events.base", "events.envelope", "__future__"} <= imports
    envelope = {m for _, m in _imports(ROOT / "events" / "envelope.py")}
    assert "cloudevents.http" in envelope and "json" in envelope


def test_core_depends_on_no_driver_handler_or_runtime() -> None:
    """functions/core is the domain: drivers implement its ports, handlers call it."""
    forbidden = ("functions.drivers", "functions.api", "functions.tasks", "functions.conductor",
                 "functions.schedules", "functions.eventfn")
    problems = [
        f"{path.relative_to(ROOT)}:{line} imports {module!r}"
        for path in _python_files("functions/core")
        for line, module in _imports(path)
        if module.startswith(forbidden)
    ]
    assert not problems, "functions/core must not depend on drivers or handlers:\n" + "\n".join(problems)
