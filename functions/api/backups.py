"""/v1.0/{project_id}/backups and /backup_strategies (Trove's shapes), one function per verb."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import backups
from functions.core.errors import BadRequest
from functions.core.schemas.backups import BackupCreate, BackupStrategyCreate
from functions.core.views import next_link
from functions.runtime import runtime, unit_of_work

BASE = "/v1.0/{project_id}/backups"
STRATEGIES = "/v1.0/{project_id}/backup_strategies"


@functions_framework.http
@api("POST", BASE, body=("backup", BackupCreate))
def create_backup(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    rt = runtime()
    with unit_of_work() as work:
        row, events = backups.create(work.session, req.project_id, body, rt.storage, rt.settings.backups.container)
        work.emit(events)
        view = backups.view(work.session, row, req.host_url)
    return 202, {"backup": view}


def _page(req: ApiRequest, instance_id: str | None):  # type: ignore[no-untyped-def]
    if req.query.get("all_projects") or req.query.get("project_id") not in (None, req.project_id):
        # Listing other projects' backups is an admin policy in Trove; not ours yet.
        raise BadRequest("Listing backups of other projects is not supported.")
    with unit_of_work() as work:
        if instance_id:
            backups.instance_kind(work.session, backups._instance(work.session, req.project_id, instance_id, lock=False))
        rows, marker = backups.list_page(
            work.session,
            req.project_id,
            instance_id=instance_id,
            datastore=req.query.get("datastore"),
            limit=req.query.get("limit"),
            marker=req.query.get("marker"),
        )
        body = {"backups": [backups.view(work.session, b, req.host_url) for b in rows]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body


@functions_framework.http
@api("GET", BASE)
def list_backups(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _page(req, req.query.get("instance_id"))


@functions_framework.http
@api("GET", "/v1.0/{project_id}/instances/{instance_id}/backups")
def list_instance_backups(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _page(req, req.params["instance_id"])


@functions_framework.http
@api("GET", BASE + "/{backup_id}")
def show_backup(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        row = backups.get(work.session, req.project_id, req.params["backup_id"])
        view = backups.view(work.session, row, req.host_url)
    return 200, {"backup": view}


@functions_framework.http
@api("DELETE", BASE + "/{backup_id}")
def delete_backup(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        work.emit(backups.delete(work.session, req.project_id, req.params["backup_id"]))
    return 202, None


@functions_framework.http
@api("POST", STRATEGIES, body=("backup_strategy", BackupStrategyCreate))
def create_backup_strategy(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    with unit_of_work() as work:
        row = backups.create_strategy(work.session, req.project_id, body, runtime().storage)
        view = backups.strategy_view(row)
    return 202, {"backup_strategy": view}


@functions_framework.http
@api("GET", STRATEGIES)
def list_backup_strategies(req: ApiRequest):  # type: ignore[no-untyped-def]
    _own_project(req)
    with unit_of_work() as work:
        rows = backups.list_strategies(work.session, req.project_id, req.query.get("instance_id"))
        return 200, {"backup_strategies": [backups.strategy_view(r) for r in rows]}


@functions_framework.http
@api("DELETE", STRATEGIES)
def delete_backup_strategies(req: ApiRequest):  # type: ignore[no-untyped-def]
    _own_project(req)
    with unit_of_work() as work:
        backups.delete_strategy(work.session, req.project_id, req.query.get("instance_id"))
    return 202, None


def _own_project(req: ApiRequest) -> None:
    from functions.core.errors import Forbidden

    if req.query.get("project_id") not in (None, req.project_id):
        raise Forbidden("Only an administrator may manage another project's backup strategies.")
