"""Step functions of the `backup` and `backup_delete` workflows (functions/core/backup_flow.py)."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.backup_flow import BACKUP, DELETE


@functions_framework.http
def backup_start_backup(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, BACKUP, "start_backup")


@functions_framework.http
def backup_wait_backup(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, BACKUP, "wait_backup")


@functions_framework.http
def backup_finish_backup(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, BACKUP, "finish_backup")


@functions_framework.http
def backup_delete_delete_objects(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, DELETE, "delete_objects")
