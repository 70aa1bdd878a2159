"""/v1.0/{project_id}/mgmt/instances[/{instance_id}/action]: administrators only."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import admin_actions, mgmt_catalog
from functions.core.errors import BadRequest
from functions.core.models.base import utcnow
from functions.core.views import next_link
from functions.runtime import runtime, unit_of_work


@functions_framework.http
@api("POST", "/v1.0/{project_id}/mgmt/instances/{instance_id}/action")
def mgmt_instance_action(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    body = req.json_object()
    if len(body) != 1:
        raise BadRequest("Exactly one action is expected in the request body.")
    [name] = body
    admin_actions.check_action(name)
    instance_id = req.params["instance_id"]
    if name in ("stop", "start"):
        with runtime().transaction() as session:
            target = admin_actions.power_target(session, instance_id)
        admin_actions.send_power(runtime().guest, target, name)
        return 202, None
    with unit_of_work() as work:
        if name == "reboot":
            work.emit(admin_actions.reboot(work.session, instance_id))
        else:
            admin_actions.reset_task_status(work.session, instance_id)
    return 202, None


@functions_framework.http
@api("GET", "/v1.0/{project_id}/mgmt/instances")
def list_mgmt_instances(req: ApiRequest):  # type: ignore[no-untyped-def]
    """Every project's instances (Trove's MgmtInstanceController.index): ?deleted=true|false
    (absent: both), ?project_id=, ?include_clustered=true, paged with limit and marker."""
    admin_actions.require_admin(req.identity)
    now = utcnow()
    with runtime().transaction() as session:
        rows, marker = mgmt_catalog.list_instances(
            session,
            deleted=req.query.get("deleted"),
            project_id=req.query.get("project_id"),
            include_clustered=req.query.get("include_clustered"),
            limit=req.query.get("limit"),
            marker=req.query.get("marker"),
        )
        body = {"instances": [mgmt_catalog.instance_view(r, req.host_url, now) for r in rows]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body
