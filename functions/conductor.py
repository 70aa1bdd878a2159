"""The conductor functions: apply what guests report (heartbeats, backup progress and
results) to the shared database."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import conductor


def _apply(work, message, event):  # type: ignore[no-untyped-def]
    work.emit(conductor.apply_heartbeat(work.session, message, event))


@functions_framework.http
def on_guest_heartbeat(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, _apply)


@functions_framework.http
def on_guest_backup_progress(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, lambda work, message, event: work.emit(
        conductor.apply_backup_progress(work.session, message, event)))


@functions_framework.http
def on_guest_backup_finished(request):  # type: ignore[no-untyped-def]
    return eventfn.handle(request, lambda work, message, event: work.emit(
        conductor.apply_backup_finished(work.session, message, event)))
