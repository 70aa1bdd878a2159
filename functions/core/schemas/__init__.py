"""Pydantic request models; `parse` turns their errors into Trove-style 400 messages."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from functions.core.errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def _path(root: str, loc: tuple[Any, ...]) -> str:
    return root + "".join(f"[{part!r}]" if isinstance(part, str) else f"[{part}]" for part in loc)


def parse(model: type[M], body: Any, root: str) -> M:
    """Validate `body[root]` against `model`; 400 "Validation error: ..." naming each problem."""
    if not isinstance(body, dict) or root not in body:
        raise BadRequest(f"Validation error: '{root}' is a required property")
    try:
        return model.model_validate(body[root])
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = _path(root, tuple(error["loc"]))
            problems.append(f"{where}: {error['msg']}")
        raise BadRequest("Validation error: " + "; ".join(problems)) from None
