"""/v1.0/{project_id}/mgmt/quotas/{target_project}: Trove's quota API.

A member may read their own project's quotas; only administrators read other projects' or
change any (functions/core/policy.py: show_quotas is admin_or_owner, update_quotas admin).
"""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import quotas
from functions.core.errors import Forbidden
from functions.core.schemas.quotas import QuotaLimits
from functions.runtime import runtime, unit_of_work

PATH = "/v1.0/{project_id}/mgmt/quotas/{target_project}"


@functions_framework.http
@api("GET", PATH)
def show_quotas(req: ApiRequest):  # type: ignore[no-untyped-def]
    """`{"quotas": [{"resource", "in_use", "reserved", "limit"}, ...]}`."""
    target = req.params["target_project"]
    identity = req.identity
    if identity is None or not (identity.is_admin or identity.project_id == target):
        raise Forbidden("Only an administrator may read another project's quotas.")
    with runtime().transaction() as session:
        return 200, quotas.usage_view(session, target)


@functions_framework.http
@api("PUT", PATH, body=("quotas", QuotaLimits))
def update_quotas(req: ApiRequest):  # type: ignore[no-untyped-def]
    """`{"quotas": {"instances": 10, "backups": 30}}` -> 200 with the limits set."""
    limits = req.body().root
    with unit_of_work() as work:
        return 200, quotas.update_limits(work.session, req.params["target_project"], limits)
