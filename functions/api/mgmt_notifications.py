"""GET /v1.0/{project_id}/mgmt/notifications: the notifications the platform sent (admins).

The ledger the notification consumer keeps (functions/core/notifications.py), oldest
first: a billing job polls it with `?marker=<last id>` and never misses one, whatever
happened to its own subscription. Filters: `event_type` (Trove's, e.g.
trove.instance.exists), `tenant_id`, `resource_id`; `limit` (100 by default, 1000 at most).
"""

from __future__ import annotations

import functions_framework

from functions.api._http import ApiRequest, api
from functions.core import notifications
from functions.core.views import next_link
from functions.runtime import runtime


@functions_framework.http
@api("GET", "/v1.0/{project_id}/mgmt/notifications")
def list_notifications(req: ApiRequest):  # type: ignore[no-untyped-def]
    with runtime().transaction() as session:
        rows, marker = notifications.list_page(
            session,
            event_type=req.query.get("event_type"),
            tenant_id=req.query.get("tenant_id"),
            resource_id=req.query.get("resource_id"),
            limit=req.query.get("limit"),
            marker=req.query.get("marker"),
        )
        body = {"notifications": [notifications.view(row) for row in rows]}
    if marker:
        body["links"] = next_link(req.url, marker)
    return 200, body
