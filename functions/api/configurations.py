"""/v1.0/{project_id}/configurations, the parameter catalog, and an instance's default
configuration: one function per verb (Trove §1.7)."""

from __future__ import annotations

import functions_framework

from functions.api import _guest
from functions.api._http import ApiRequest, api
from functions.core import accounts, configurations
from functions.core.schemas.configurations import (
    ConfigurationCreate,
    ConfigurationEdit,
    ConfigurationUpdate,
)
from functions.core.views import next_link
from functions.runtime import runtime

BASE = "/v1.0/{project_id}/configurations"
PARAMETERS = "/v1.0/{project_id}/datastores/{datastore}/versions/{version}/parameters"
PARAMETERS_BY_VERSION = "/v1.0/{project_id}/datastores/versions/{version}/parameters"


@functions_framework.http
@api("POST", BASE, body=("configuration", ConfigurationCreate))
def create_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    body = req.body()
    with runtime().transaction() as session:
        view = configurations.view(configurations.create(session, req.project_id, body))
    return 200, {"configuration": view}


@functions_framework.http
@api("GET", BASE)
def list_configurations(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        groups, marker = configurations.list_groups(session, req.project_id, req.query.get("limit"), req.query.get("marker"))
        body = {"configurations": [configurations.list_view(g) for g in groups]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body


@functions_framework.http
@api("GET", BASE + "/{configuration_id}")
def show_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        view = configurations.view(configurations.get(session, req.project_id, req.params["configuration_id"]))
    return 200, {"configuration": view}


@functions_framework.http
@api("GET", BASE + "/{configuration_id}/instances")
def list_configuration_instances(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        found, marker = configurations.attached_instances(
            session, req.project_id, req.params["configuration_id"], req.query.get("limit"), req.query.get("marker"))
        body = {"instances": [{"id": i.id, "name": i.name} for i in found]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body


def _edit(req: ApiRequest, *, merge: bool) -> None:
    body = req.body()
    config_id = req.params["configuration_id"]
    rt = runtime()
    with rt.transaction() as session:
        attached = configurations.update(session, req.project_id, config_id, body, merge=merge)
    configurations.reapply(rt.transaction, rt.guest, req.project_id, config_id, attached)


@functions_framework.http
@api("PUT", BASE + "/{configuration_id}", body=("configuration", ConfigurationUpdate))
def update_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    _edit(req, merge=False)
    return 202, None


@functions_framework.http
@api("PATCH", BASE + "/{configuration_id}", body=("configuration", ConfigurationEdit))
def edit_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    _edit(req, merge=True)
    return 200, None  # Trove: 200 with an empty body


@functions_framework.http
@api("DELETE", BASE + "/{configuration_id}")
def delete_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        configurations.delete_group(session, req.project_id, req.params["configuration_id"])
    return 202, None


@functions_framework.http
@api("GET", "/v1.0/{project_id}/instances/{instance_id}/configuration")
def show_instance_configuration(req: ApiRequest):  # type: ignore[no-untyped-def]
    """The platform's settings for the instance's flavor, as its guest renders them."""
    t = _guest.target(req)
    return 200, {"instance": {"configuration": accounts.default_configuration(runtime().guest, t)}}


def _parameters(req: ApiRequest, datastore: str | None):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        version, params = configurations.parameters(session, datastore, req.params["version"])
    return 200, {"configuration-parameters": [p.to_api(version.id) for p in params]}


def _parameter(req: ApiRequest, datastore: str | None):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        version, param = configurations.parameter(session, datastore, req.params["version"], req.params["name"])
    return 200, param.to_api(version.id)


@functions_framework.http
@api("GET", PARAMETERS)
def list_parameters(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _parameters(req, req.params["datastore"])


@functions_framework.http
@api("GET", PARAMETERS + "/{name}")
def show_parameter(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _parameter(req, req.params["datastore"])


@functions_framework.http
@api("GET", PARAMETERS_BY_VERSION)
def list_parameters_by_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _parameters(req, None)


@functions_framework.http
@api("GET", PARAMETERS_BY_VERSION + "/{name}")
def show_parameter_by_version(req: ApiRequest):  # type: ignore[no-untyped-def]
    return _parameter(req, None)
