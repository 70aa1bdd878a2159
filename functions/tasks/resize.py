"""Step functions of the `resize` workflow (functions/core/resizing.py)."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.resizing import RESIZE


@functions_framework.http
def resize_grow_volume(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESIZE, "grow_volume")


@functions_framework.http
def resize_resize_server(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESIZE, "resize_server")


@functions_framework.http
def resize_send_resize(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESIZE, "send_resize")


@functions_framework.http
def resize_wait_resized(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESIZE, "wait_resized")


@functions_framework.http
def resize_finish_resize(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, RESIZE, "finish_resize")
