"""/v1.0/{project_id}/instances: one function per verb."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import (
    admin_actions,
    configurations,
    instances,
    policy,
    resizing,
    upgrades,
)
from functions.core import instance_views as views
from functions.core.errors import BadRequest, NotImplementedFeature
from functions.core.models.base import utcnow
from functions.core.schemas.instances import InstanceCreate, InstanceUpdate
from functions.core.views import next_link
from functions.runtime import runtime, unit_of_work

BASE = "/v1.0/{project_id}/instances"


@functions_framework.http
@api("POST", BASE, body=("instance", InstanceCreate))
def create_instance(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    with unit_of_work() as work:
        row, events = instances.create(work.session, req.project_id, body)
        work.emit(events)
        view = views.detail(row, req.host_url, req.project_id, utcnow(), admin=_admin(req))
    return 200, {"instance": view}


def _list(req: ApiRequest, detailed: bool):  # type: ignore[no-untyped-def]
    now = utcnow()
    with unit_of_work() as work:
        rows, marker = instances.list_rows(work.session, req.project_id, req.query.get("limit"), req.query.get("marker"))
        render = views.detail if detailed else views.basic
        body = {"instances": [render(r, req.host_url, req.project_id, now) for r in rows]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body


@functions_framework.http
@api("GET", BASE)
def list_instances(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _list(req, detailed=False)


@functions_framework.http
@api("GET", BASE + "/detail")
def list_instances_detail(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _list(req, detailed=True)


@functions_framework.http
@api("GET", BASE + "/{instance_id}")
def show_instance(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        row = instances.get_row(work.session, req.project_id, req.params["instance_id"])
        view = views.detail(row, req.host_url, req.project_id, utcnow(), with_usage=True, admin=_admin(req))
    return 200, {"instance": view}


def _update(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    instance_id = req.params["instance_id"]
    with unit_of_work() as work:
        change = instances.update(work.session, req.project_id, instance_id, body)
    rt = runtime()
    if change == "configuration":
        configurations.change_instance(rt.transaction, rt.guest, req.project_id, instance_id, body.configuration,
                                       attach=body.configuration is not None)
    elif change == "datastore_version":
        with unit_of_work() as work:
            work.emit(upgrades.start(work.session, req.project_id, instance_id, body.datastore_version or ""))
    return 202, None


@functions_framework.http
@api("PUT", BASE + "/{instance_id}", body=("instance", InstanceUpdate))
def update_instance(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _update(req)


@functions_framework.http
@api("PATCH", BASE + "/{instance_id}", body=("instance", InstanceUpdate))
def edit_instance(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _update(req)


@functions_framework.http
@api("DELETE", BASE + "/{instance_id}")
def delete_instance(req: ApiRequest):  # type: ignore[no-untyped-def]
    with unit_of_work() as work:
        work.emit(instances.delete(work.session, req.project_id, req.params["instance_id"]))
    return 202, None


ACTIONS = {"restart": instances.restart}
LATER = {"promote_to_replica_source", "eject_replica_source"}


@functions_framework.http
@api("POST", BASE + "/{instance_id}/action")
def instance_action(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.json_object()
    if len(body) != 1:
        raise BadRequest("Exactly one action is expected in the request body.")
    [(name, _args)] = body.items()
    if name in LATER:
        raise NotImplementedFeature(f"The '{name}' action is not available in this release of Troveless yet.")
    if name == "reset_status":
        # Trove's instance:reset_status policy: administrators only, any project's instance.
        policy.enforce("instance:reset_status", req.identity, req.project_id)
        with unit_of_work() as work:
            admin_actions.reset_status(work.session, req.params["instance_id"])
        return 202, None
    if name == "resize":
        with unit_of_work() as work:
            inst = instances.lock(work.session, req.project_id, req.params["instance_id"])
            work.emit(resizing.start(work.session, inst, _args, instances.MAX_VOLUME_GB))
        return 202, None
    if name not in ACTIONS:
        raise BadRequest(f"Invalid instance action: {name}")
    with unit_of_work() as work:
        work.emit(ACTIONS[name](work.session, req.project_id, req.params["instance_id"]))
    return 202, None


def _admin(req: ApiRequest) -> bool:
    return bool(req.identity and req.identity.is_admin)
