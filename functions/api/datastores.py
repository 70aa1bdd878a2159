"""/v1.0/{project_id}/datastores[...]: the datastore catalog."""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import catalog
from functions.runtime import runtime

BASE = "/v1.0/{project_id}/datastores"


def _admin(req: ApiRequest) -> bool:
    return bool(req.identity and req.identity.is_admin)


@functions_framework.http
@api("GET", BASE)
def list_datastores(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        return 200, {
            "datastores": [
                catalog.datastore_view(ds, versions, req.host_url, req.project_id, _admin(req))
                for ds, versions in catalog.list_datastores(s)
            ]
        }


@functions_framework.http
@api("GET", BASE + "/{datastore}")
def show_datastore(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        ds = catalog.get_datastore(s, req.params["datastore"])
        view = catalog.datastore_view(ds, catalog.versions_of(s, ds), req.host_url, req.project_id, _admin(req))
        return 200, {"datastore": view}


@functions_framework.http
@api("GET", BASE + "/{datastore}/versions")
def list_datastore_versions(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        ds = catalog.get_datastore(s, req.params["datastore"])
        return 200, {
            "versions": [
                catalog.version_view(v, req.host_url, req.project_id, admin=_admin(req))
                for v in catalog.versions_of(s, ds)
            ]
        }


@functions_framework.http
@api("GET", BASE + "/{datastore}/versions/{version}")
def show_datastore_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        ds = catalog.get_datastore(s, req.params["datastore"])
        version = catalog.get_version(s, ds, req.params["version"])
        return 200, {"version": catalog.version_view(version, req.host_url, req.project_id, admin=_admin(req))}


@functions_framework.http
@api("GET", BASE + "/versions/{version_id}")
def show_datastore_version_by_id(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as s:
        version = catalog.get_version_by_id(s, req.params["version_id"])
        return 200, {"version": catalog.version_view(version, req.host_url, req.project_id, admin=_admin(req))}
