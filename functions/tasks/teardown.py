"""Step functions of the `teardown` workflow (functions/core/provisioning.py).

Delete an instance in any state: cancel its build, stop its server, remove its volume.
"""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.provisioning import TEARDOWN


@functions_framework.http
def teardown_cancel_work(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, TEARDOWN, "cancel_work")


@functions_framework.http
def teardown_stop_server(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, TEARDOWN, "stop_server")


@functions_framework.http
def teardown_remove_volume(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, TEARDOWN, "remove_volume")


@functions_framework.http
def teardown_finish_delete(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, TEARDOWN, "finish_delete")
