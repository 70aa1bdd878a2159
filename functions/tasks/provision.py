"""Step functions of the `provision` workflow (functions/core/provisioning.py).

Create an instance: address, volume, server (with the prepare command as user data),
wait for the guest's HEALTHY heartbeat, ACTIVE.
"""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.provisioning import PROVISION


@functions_framework.http
def provision_reserve(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, PROVISION, "reserve")


@functions_framework.http
def provision_allocate_volume(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, PROVISION, "allocate_volume")


@functions_framework.http
def provision_create_server(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, PROVISION, "create_server")


@functions_framework.http
def provision_wait_guest_healthy(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, PROVISION, "wait_guest_healthy")


@functions_framework.http
def provision_mark_active(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, PROVISION, "mark_active")
