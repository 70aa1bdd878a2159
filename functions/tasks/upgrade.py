"""Step functions of the `upgrade` workflow (functions/core/upgrades.py)."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.upgrades import UPGRADE


@functions_framework.http
def upgrade_send_upgrade(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, UPGRADE, "send_upgrade")


@functions_framework.http
def upgrade_wait_upgraded(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, UPGRADE, "wait_upgraded")


@functions_framework.http
def upgrade_finish_upgrade(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, UPGRADE, "finish_upgrade")
