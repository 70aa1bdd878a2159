"""The conductor function: applies guest heartbeats to the shared database."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import conductor


def _apply(work, message, event):  # type: ignore[no-untyped-def]
    work.emit(conductor.apply_heartbeat(work.session, message, event))


@functions_framework.http
def on_guest_heartbeat(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _apply)
