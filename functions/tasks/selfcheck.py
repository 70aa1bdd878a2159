"""The `selfcheck` workflow: a three-step round trip through the broker and the step runner.

`troveless selfcheck` (and `troveless up` once it is ready) starts it to prove the event path
works end to end: outbox -> broker -> step function -> reply -> next step -> shared database.
Each step stamps the context, so the run records how long every hop took.
"""

from __future__ import annotations

import functions_framework

from functions import eventfn
from functions.core.workflow import Retry, Step, StepContext, Workflow


def _stamp(name: str):  # type: ignore[no-untyped-def]
    def run(ctx: StepContext) -> None:
        ctx.context.setdefault("stamps", {})[name] = ctx.now.isoformat()

    return run


SELFCHECK = Workflow(
    "selfcheck",
    [
        Step("ping", _stamp("ping"), retry=Retry(attempts=3, interval_s=0.5), timeout_s=30),
        Step("echo", _stamp("echo"), retry=Retry(attempts=3, interval_s=0.5), timeout_s=30),
        Step("report", _stamp("report"), retry=Retry(attempts=3, interval_s=0.5), timeout_s=30),
    ],
)


@functions_framework.http
def selfcheck_ping(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, SELFCHECK, "ping")


@functions_framework.http
def selfcheck_echo(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, SELFCHECK, "echo")


@functions_framework.http
def selfcheck_report(request):  # type: ignore[no-untyped-def]
    return eventfn.run_step(request, SELFCHECK, "report")
