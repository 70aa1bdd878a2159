"""Resize an instance: a new flavor (memory and connection settings; the server restarts)
or a bigger volume (grow only), as Trove's `resize` action.

`resize` workflow: grow_volume (the compute driver; a no-op for a flavor change) →
resize_server (the compute driver moves the server to the new flavor: a Nova resize and its
confirm; a no-op for a volume change and for the local driver) → send_resize
(ResizeRequested to the guest) → wait_resized (a HEALTHY heartbeat sent after
the request; resumed by the conductor) → finish_resize (the instance takes the new size,
task NONE). On failure the task goes back to NONE with a fault, the old size stays recorded.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message, format_time
from events.guest import FlavorSpec, ResizeRequested
from functions.core import config_values, flavors, guards, notifications, quotas
from functions.core.errors import BadRequest, OverLimit
from functions.core.models.base import utcnow
from functions.core.models.datastore import Flavor
from functions.core.models.instance import Instance, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.provisioning import (
    STEADY,
    _compute_call,
    _deps,
    _guest_call,
    _instance,
    healthy_since,
    record_fault,
)
from functions.core.states import Task
from functions.core.workflow import Retry, Step, StepContext, Wait, Workflow

RESIZE_DEADLINE_S = 180.0
# resize_server polls Nova through its retries: a `Wait` is only ever ended by an explicit
# resume (the conductor, on a heartbeat) and the sweeper does not re-run a waiting step, so
# "not yet" is a transient error and the retry is the poll. 60 attempts 5 s apart (plus the
# sweeper's pace) leave a Nova resize (a cold migration and its confirm) about 5 minutes.
SERVER_RESIZE_POLL = Retry(attempts=60, interval_s=5.0, backoff_rate=1.0, max_delay_s=5.0)


class ServerResizing(Exception):
    """The server is still moving to the new flavor (transient: the step's retry asks again)."""


def start(session: Session, inst: Instance, args: object, max_volume_gb: int) -> list[Message]:
    """Validate Trove's `{"resize": {"flavorRef": f}}` or `{"resize": {"volume": {"size": n}}}`
    and start the workflow (task RESIZING)."""
    if not isinstance(args, dict) or len(args) != 1 or not ({"flavorRef", "volume"} & set(args)):
        raise BadRequest("Resize requires either 'flavorRef' or 'volume' (and not both).")
    service = session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == inst.id)).scalar_one_or_none()
    guards.can_perform_action(session, inst, service)
    context: dict[str, object] = {}
    if "volume" in args:
        volume = args["volume"]
        size = volume.get("size") if isinstance(volume, dict) else None
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise BadRequest("The volume 'size' must be a positive integer.")
        current = inst.volume_size or 0
        if size <= current:
            raise BadRequest(f"The new volume 'size' must be larger than the current volume size of '{current}'.")
        if size > max_volume_gb:
            raise OverLimit(f"Volume 'size' cannot exceed maximum of {max_volume_gb} GB, {size} cannot be accepted.")
        context["volume_size"] = size
        grown = {"volumes": size}
    else:
        flavor = flavors.get_flavor(session, str(args["flavorRef"]))
        if flavor.id == inst.flavor_id:
            raise BadRequest(f"The new flavor id must be different than the current flavor id of '{inst.flavor_id}'.")
        context["flavor_id"] = flavor.id
        grown = {"ram": max(quotas.of_instance(session, inst)["ram"], flavor.ram)}
    # Reserve the growth now (413 over the quota); a smaller flavor gives RAM back when done.
    quotas.set_held(session, inst.id, grown, enforce=True)
    inst.task_id = Task.RESIZING
    inst.task_description = Task.RESIZING.description
    _, first = RESIZE.start(session, resource_id=inst.id, context=context)
    return [first]


def grow_volume(ctx: StepContext) -> None:
    size = ctx.context.get("volume_size")
    if size:
        _compute_call(_deps().compute.resize_volume, ctx.resource_id or "", int(size))


def resize_server(ctx: StepContext) -> None:
    flavor_id = ctx.context.get("flavor_id")
    if not flavor_id:
        return  # a volume resize: the server keeps its flavor
    if not _compute_call(_deps().compute.resize_server, ctx.resource_id or "", str(flavor_id)):
        raise ServerResizing(f"server of {ctx.resource_id} is moving to flavor {flavor_id}")


def send_resize(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    flavor = None
    if ctx.context.get("flavor_id"):
        row = flavors.get_flavor(ctx.session, str(ctx.context["flavor_id"]))
        flavor = FlavorSpec(ram_mb=row.ram, vcpus=row.vcpus)
    ctx.context["requested_at"] = format_time(utcnow())
    size = ctx.context.get("volume_size")
    _guest_call(ctx, inst, ResizeRequested(instance_id=inst.id, flavor=flavor,
                                           volume_size_gb=int(size) if size else None,
                                           overrides=config_values.overrides_of(ctx.session, inst)))


def wait_resized(ctx: StepContext) -> Wait | None:
    row = ctx.session.execute(select(ServiceStatus).where(ServiceStatus.instance_id == ctx.resource_id)).scalar_one_or_none()
    if row is not None and healthy_since(row, ctx.context.get("requested_at")):
        return None
    return Wait(timeout_s=RESIZE_DEADLINE_S)


def finish_resize(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    old_flavor = ctx.session.get(Flavor, inst.flavor_id) if inst.flavor_id else None
    old_volume = inst.volume_size
    if ctx.context.get("flavor_id"):
        inst.flavor_id = str(ctx.context["flavor_id"])
    if ctx.context.get("volume_size"):
        inst.volume_size = int(ctx.context["volume_size"])  # type: ignore[call-overload]
    if inst.task_id == Task.RESIZING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description
    quotas.set_held(ctx.session, inst.id, quotas.of_instance(ctx.session, inst), enforce=False)
    # Trove's usage events for a finished resize, in the transaction that records it.
    if ctx.context.get("flavor_id"):
        notifications.emit(ctx.session, [notifications.instance_flavor_modified(
            ctx.session, inst, ctx.context, old_ram_mb=old_flavor.ram if old_flavor else None, at=ctx.now,
            run_id=ctx.run_id)])
    if ctx.context.get("volume_size"):
        notifications.emit(ctx.session, [notifications.instance_volume_modified(
            ctx.session, inst, ctx.context, old_size_gb=old_volume, at=ctx.now, run_id=ctx.run_id)])


def _resize_failed(session: Session, run: WorkflowRun) -> None:
    inst = session.get(Instance, run.resource_id)
    if inst is None or inst.deleted:
        return
    if inst.task_id == Task.RESIZING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description
    record_fault(session, inst.id, run.error or "resize failed", f"workflow run {run.id}")
    # Back to what the row records: the growth reserved at the start is given back.
    quotas.set_held(session, inst.id, quotas.of_instance(session, inst), enforce=False)


RESIZE = Workflow(
    "resize",
    [
        Step("grow_volume", grow_volume, retry=STEADY, timeout_s=60),
        Step("resize_server", resize_server, retry=SERVER_RESIZE_POLL, timeout_s=60),
        Step("send_resize", send_resize, retry=STEADY, timeout_s=60),
        Step("wait_resized", wait_resized, retry=STEADY, timeout_s=RESIZE_DEADLINE_S),
        Step("finish_resize", finish_resize, retry=STEADY, timeout_s=30),
    ],
    on_failure=_resize_failed,
)
