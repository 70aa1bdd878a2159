"""Cron-triggered functions (Knative PingSource; the local scheduler emulates it)."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import outbox, workflow
from functions.runtime import runtime

# Outbox rows younger than this are still being relayed by the function that wrote them.
OUTBOX_GRACE_S = 5.0


@functions_framework.http
def sweep_workflows(request):  # type: ignore[no-untyped-def]
    """Re-emit due step events and compensate runs past their deadline; settle instances a
    dying API function left applying a configuration group; drop ended rate-limit windows."""

    def apply(work, _m, _e):  # type: ignore[no-untyped-def]
        from functions.core import configurations, rate_limits

        work.emit(workflow.sweep(work.session))
        configurations.recover_interrupted(work.session)
        rate_limits.purge(work.session)

    return eventfn.handle(request, apply)


@functions_framework.http
def relay_outbox(request):  # type: ignore[no-untyped-def]
    """Publish outbox events whose writer died before it could relay them."""

    def apply(work, _m, _e):  # type: ignore[no-untyped-def]
        rt = runtime()
        if rt.publisher is not None:
            outbox.relay(rt.sessions, rt.publisher, older_than_s=OUTBOX_GRACE_S)

    return eventfn.handle(request, apply, transactional=False)


@functions_framework.http
def run_backup_schedules(request):  # type: ignore[no-untyped-def]
    """Start the scheduled backups that are due."""

    def apply(work, _m, _e):  # type: ignore[no-untyped-def]
        from functions.core import backup_schedules

        rt = runtime()
        work.emit(backup_schedules.run_due(work.session, rt.storage, rt.settings.backups.container))

    return eventfn.handle(request, apply)
