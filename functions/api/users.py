"""/v1.0/{project_id}/instances/{instance_id}/users[...]: users and their access."""

from __future__ import annotations

import functions_framework

from functions.api import _guest
from functions.api._http import ApiRequest, api
from functions.core import accounts
from functions.runtime import runtime

BASE = "/v1.0/{project_id}/instances/{instance_id}/users"


@functions_framework.http
@api("GET", BASE)
def list_users(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    items, marker = accounts.list_users(runtime().guest, t, req.query.get("limit"), req.query.get("marker"))
    return _guest.paged(req, "users", items, marker)


@functions_framework.http
@api("POST", BASE)
def create_users(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.create_users(runtime().guest, t, accounts.parse_users(t.kind, req.json()))
    return 202, None


@functions_framework.http
@api("PUT", BASE)
def change_passwords(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.change_passwords(runtime().guest, t, req.json())
    return 202, None


@functions_framework.http
@api("GET", BASE + "/{user}")
def show_user(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    return 200, {"user": accounts.show_user(runtime().guest, t, accounts.user_ref(t.kind, req.params["user"]))}


@functions_framework.http
@api("PUT", BASE + "/{user}")
def update_user(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.update_user(runtime().guest, t, accounts.user_ref(t.kind, req.params["user"]), req.json())
    return 202, None


@functions_framework.http
@api("DELETE", BASE + "/{user}")
def delete_user(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.delete_user(runtime().guest, t, accounts.user_ref(t.kind, req.params["user"]))
    return 202, None


@functions_framework.http
@api("GET", BASE + "/{user}/databases")
def list_user_access(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    return 200, {"databases": accounts.list_access(runtime().guest, t, accounts.user_ref(t.kind, req.params["user"]))}


@functions_framework.http
@api("PUT", BASE + "/{user}/databases")
def grant_user_access(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    accounts.grant_access(runtime().guest, t, accounts.user_ref(t.kind, req.params["user"]), req.json())
    return 202, None


@functions_framework.http
@api("DELETE", BASE + "/{user}/databases/{database}")
def revoke_user_access(req: ApiRequest):  # type: ignore[no-untyped-def]
    t = _guest.target(req)
    ref = accounts.user_ref(t.kind, req.params["user"])
    accounts.revoke_access(runtime().guest, t, ref, req.params["database"])
    return 202, None
