"""The catalog for administrators: /v1.0/{project_id}/mgmt/datastore-versions and
/v1.0/{project_id}/mgmt/flavors. Everyone else gets 403.

Datastore versions are Trove's mgmt API (GET and POST the collection; GET, PATCH and
DELETE a version). Flavors are our extension, since Trove delegates flavors to Nova and has
no such API; the bodies are Nova's:

- POST   /mgmt/flavors       {"flavor": {"id"?, "name", "ram", "vcpus", "disk"?, "ephemeral"?,
                              "is_public"?}} -> 200 {"flavor": <as GET /flavors/{id}>};
                              no id (or "auto"): the next free integer. Duplicate id or name: 409.
- PATCH  /mgmt/flavors/{id}  {"flavor": {any of name, ram, vcpus, disk, ephemeral, is_public}}
                              -> 202 {"flavor": ...}; only the name may change while a live
                              instance uses the flavor (409 otherwise).
- DELETE /mgmt/flavors/{id}  -> 202; 409 while a live instance uses it.
"""

from __future__ import annotations

from typing import Any

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import admin_actions, flavors, mgmt_catalog
from functions.core.schemas import parse
from functions.core.schemas.mgmt import (
    DatastoreVersionCreate,
    DatastoreVersionEdit,
    FlavorCreate,
    FlavorEdit,
)
from functions.runtime import runtime

VERSIONS = "/v1.0/{project_id}/mgmt/datastore-versions"
FLAVORS = "/v1.0/{project_id}/mgmt/flavors"


@functions_framework.http
@api("GET", VERSIONS)
def list_mgmt_datastore_versions(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    with runtime().transaction() as session:
        rows = mgmt_catalog.list_versions(session)
        return 200, {"versions": [mgmt_catalog.version_view(ds, v) for ds, v in rows]}


@functions_framework.http
@api("POST", VERSIONS, body=("version", DatastoreVersionCreate))
def create_mgmt_datastore_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    body = req.body()
    with runtime().transaction() as session:
        mgmt_catalog.create_version(session, body)
    return 202, None


@functions_framework.http
@api("GET", VERSIONS + "/{version_id}")
def show_mgmt_datastore_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    with runtime().transaction() as session:
        datastore, version = mgmt_catalog.get_version(session, req.params["version_id"])
        return 200, {"version": mgmt_catalog.version_view(datastore, version)}


@functions_framework.http
@api("PATCH", VERSIONS + "/{version_id}")
def edit_mgmt_datastore_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    raw: dict[str, Any] = req.json_object()
    # python-troveclient sends the attributes unwrapped, as Trove reads them; a
    # {"version": {...}} body, like the create's, is taken too.
    wrapped = raw if isinstance(raw.get("version"), dict) and len(raw) == 1 else {"version": raw}
    body = parse(DatastoreVersionEdit, wrapped, "version")
    with runtime().transaction() as session:
        mgmt_catalog.edit_version(session, req.params["version_id"], body)
    return 202, None


@functions_framework.http
@api("DELETE", VERSIONS + "/{version_id}")
def delete_mgmt_datastore_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    with runtime().transaction() as session:
        mgmt_catalog.delete_version(session, req.params["version_id"])
    return 202, None


@functions_framework.http
@api("POST", FLAVORS, body=("flavor", FlavorCreate))
def create_mgmt_flavor(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    body = req.body()
    with runtime().transaction() as session:
        flavor = mgmt_catalog.create_flavor(session, body)
        return 200, {"flavor": flavors.view(flavor, req.host_url, req.project_id)}


@functions_framework.http
@api("PATCH", FLAVORS + "/{flavor_id}", body=("flavor", FlavorEdit))
def edit_mgmt_flavor(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    body = req.body()
    with runtime().transaction() as session:
        flavor = mgmt_catalog.edit_flavor(session, req.params["flavor_id"], body)
        return 202, {"flavor": flavors.view(flavor, req.host_url, req.project_id)}


@functions_framework.http
@api("DELETE", FLAVORS + "/{flavor_id}")
def delete_mgmt_flavor(req: ApiRequest):  # type: ignore[no-untyped-def]
    admin_actions.require_admin(req.identity)
    with runtime().transaction() as session:
        mgmt_catalog.delete_flavor(session, req.params["flavor_id"])
    return 202, None
