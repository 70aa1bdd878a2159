"""The dead-letter sink of every Trigger: records what the broker could not deliver."""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core import deadletters


def _record(work, message, _event):  # type: ignore[no-untyped-def]
    deadletters.record(work.session, message)  # a second copy of the same letter is a no-op


@functions_framework.http
def record_dead_letter(request):  # type: ignore[no-untyped-def]
    # Any event type may end here, so its data is stored as it came, not parsed.
    return eventfn.handle(request, _record, parse=False)
