"""Step functions of the `restart` workflow (functions/core/provisioning.py).

Restart an instance's database through its guest and wait until it is healthy again.
"""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.provisioning import RESTART


@functions_framework.http
def restart_send_restart(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESTART, "send_restart")


@functions_framework.http
def restart_wait_restarted(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESTART, "wait_restarted")


@functions_framework.http
def restart_finish_restart(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESTART, "finish_restart")
