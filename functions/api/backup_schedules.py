"""/v1.0/{project_id}/backup_schedules: scheduled backups with retention (ours; Trove-styled:
`{"backup_schedule": {...}}` bodies, `{"backup_schedules": [...]}` lists, Trove faults)."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import backup_schedules as schedules
from functions.core.schemas.backups import BackupScheduleCreate
from functions.runtime import unit_of_work

BASE = "/v1.0/{project_id}/backup_schedules"


@functions_framework.http
@api("POST", BASE, body=("backup_schedule", BackupScheduleCreate))
def create_backup_schedule(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    with unit_of_work() as work:
        row = schedules.create(work.session, req.project_id, body)
        return 200, {"backup_schedule": schedules.view(row)}


@functions_framework.http
@api("GET", BASE)
def list_backup_schedules(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        rows = schedules.list_rows(work.session, req.project_id, req.query.get("instance_id"))
        return 200, {"backup_schedules": [schedules.view(r) for r in rows]}


@functions_framework.http
@api("GET", BASE + "/{schedule_id}")
def show_backup_schedule(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        row = schedules.get(work.session, req.project_id, req.params["schedule_id"])
        return 200, {"backup_schedule": schedules.view(row)}


@functions_framework.http
@api("DELETE", BASE + "/{schedule_id}")
def delete_backup_schedule(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        schedules.delete(work.session, req.project_id, req.params["schedule_id"])
    return 202, None
