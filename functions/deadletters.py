"""The dead-letter sink of every Trigger: records what the broker could not deliver."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import deadletters


@functions_framework.http
def record_dead_letter(request):  # type: ignore[no-untyped-def]
    # Any event type may end here, so its data is stored as it came, not parsed.
    return eventfn.handle(request, lambda work, message, _: deadletters.record(work.session, message) and None, parse=False)
