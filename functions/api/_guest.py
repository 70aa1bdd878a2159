"""Shared by the database, user and root API modules: find the instance's guest."""

from __future__ import annotations

from typing import Any

from functions.api._http import ApiRequest
from functions.core import accounts
from functions.core.views import next_link
from functions.runtime import runtime


def target(req: ApiRequest) -> accounts.Target:
    with runtime().transaction() as session:
        return accounts.target(session, req.project_id, req.params["instance_id"])


def paged(req: ApiRequest, key: str, items: list[dict[str, Any]], marker: str | None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {key: items}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body


def optional_body(req: ApiRequest) -> Any:
    return req.json() if req.raw_body.strip() else None
