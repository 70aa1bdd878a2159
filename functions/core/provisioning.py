"""Instance workflows: provision (create), teardown (delete) and restart.

Each step does one idempotent thing keyed by the instance id, so a redelivered or retried
step never duplicates a server or a volume. Waiting for the guest is a `Wait` resumed by
the conductor when the awaited heartbeat arrives (or failed by the sweeper at the deadline):
no step ever sleeps.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from events.envelope import Message, format_time, parse_time, to_json
from events.guest import (
    BackupObject,
    DatabaseSpec,
    FlavorSpec,
    PrepareRequested,
    RestartRequested,
    RestoreSpec,
    UserSpec,
    sign_command,
)
from functions.core import config_values, notifications
from functions.core import workflow as runner
from functions.core.models.base import utcnow
from functions.core.models.datastore import Datastore, DatastoreVersion, Flavor
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.models.platform import WorkflowRun
from functions.core.ports import ComputeError, GuestError, ServerSpec
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.core.workflow import Retry, Step, StepContext, StepFailed, Wait, Workflow

log = logging.getLogger("troveless.provisioning")

PREPARE_DEADLINE_S = 300.0
RESTART_DEADLINE_S = 180.0
STEADY = Retry(attempts=5, interval_s=1.0, backoff_rate=2.0, max_delay_s=15.0)


def _deps():  # type: ignore[no-untyped-def]
    from functions.runtime import runtime

    return runtime()


def _instance(session: Session, instance_id: str) -> Instance:
    inst = session.execute(select(Instance).where(Instance.id == instance_id).with_for_update()).scalar_one_or_none()
    if inst is None:
        raise StepFailed(f"instance {instance_id} does not exist")
    return inst


def _datastore_name(session: Session, inst: Instance) -> str:
    return session.execute(
        select(Datastore.name)
        .join(DatastoreVersion, DatastoreVersion.datastore_id == Datastore.id)
        .where(DatastoreVersion.id == inst.datastore_version_id)
    ).scalar_one()


def _guest_call(ctx: StepContext, inst: Instance, command) -> Message | None:  # type: ignore[no-untyped-def]
    address = (inst.addresses or [{}])[0].get("address")
    if not address or not inst.encrypted_key:
        raise StepFailed("the instance has no address or key")
    try:
        return _deps().guest.send(inst.id, address, bytes.fromhex(inst.encrypted_key), command)
    except GuestError as exc:
        if exc.transient:
            raise
        raise StepFailed(str(exc)) from exc


def _compute_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except ComputeError as exc:
        if exc.transient:
            raise
        raise StepFailed(str(exc)) from exc


def record_fault(session: Session, instance_id: str, message: str, details: str | None = None) -> None:
    session.add(InstanceFault(instance_id=instance_id, message=message[:255], details=details))


# ---- provision ---------------------------------------------------------------------------


def reserve(ctx: StepContext) -> None:
    """Give the instance its own loopback address (held in the row from now on)."""
    inst = _instance(ctx.session, ctx.resource_id or "")
    if inst.deleted or inst.task_id != Task.BUILDING:
        raise StepFailed("the instance is no longer being built")
    if inst.addresses:
        return
    taken = {
        a["address"]
        for (addresses,) in ctx.session.execute(
            select(Instance.addresses).where(Instance.deleted.is_(False), Instance.addresses.is_not(None))
        )
        for a in addresses or []
    }
    address = _compute_call(_deps().compute.pick_address, taken, _datastore_name(ctx.session, inst))
    inst.addresses = [{"address": address, "type": "private", "network": "loopback"}]


def release_address(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    inst.addresses = None


def allocate_volume(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    inst.volume_id = _compute_call(_deps().compute.allocate_volume, inst.id, inst.volume_size or 1)


def release_volume(ctx: StepContext) -> None:
    _compute_call(_deps().compute.delete_volume, ctx.resource_id or "")


def create_server(ctx: StepContext) -> None:
    """Start the guest with its prepare command as user data (as cloud-init would carry it),
    so the datastore initialises at boot instead of after a network round trip."""
    inst = _instance(ctx.session, ctx.resource_id or "")
    rt = _deps()
    if not rt.settings.broker_url:
        raise StepFailed("no broker URL configured: guests could not report")
    secret = bytes.fromhex(inst.encrypted_key or "")
    spec = ServerSpec(
        instance_id=inst.id,
        datastore=_datastore_name(ctx.session, inst),
        address=(inst.addresses or [{}])[0]["address"],
        volume_size_gb=inst.volume_size or 1,
        key=secret,
        broker_url=rt.settings.broker_url,
        user_data=to_json(sign_command(inst.id, secret, _prepare_command(ctx, inst))),
        # What a cloud driver boots (the local driver ignores both).
        flavor_id=inst.flavor_id,
        image_id=getattr(ctx.session.get(DatastoreVersion, inst.datastore_version_id), "image_id", None),
    )
    inst.compute_instance_id = _compute_call(rt.compute.create_server, spec)
    inst.server_status = "BUILD"
    # The guest has the initial passwords now; do not keep them in the run's context.
    ctx.context["users"] = [{**u, "password": "***"} for u in ctx.context.get("users", [])]


def delete_server(ctx: StepContext) -> None:
    _compute_call(_deps().compute.delete_server, ctx.resource_id or "")


def _prepare_command(ctx: StepContext, inst: Instance) -> PrepareRequested:
    version = ctx.session.get(DatastoreVersion, inst.datastore_version_id)
    flavor = ctx.session.get(Flavor, inst.flavor_id or "")
    if version is None or flavor is None:
        raise StepFailed("the instance's datastore version or flavor is gone")
    users = ctx.context.get("users", [])
    if any(u.get("password") == "***" for u in users):
        # A retry after the guest got the passwords: it is prepared or preparing already.
        users = []
    restore = None
    if ctx.context.get("restore"):
        restore = RestoreSpec(
            store=_deps().storage.store_options(),
            chain=[BackupObject.model_validate(b) for b in ctx.context["restore"]],
        )
    return PrepareRequested(
        restore=restore,
        instance_id=inst.id,
        datastore="postgresql" if version.manager == "postgresql" else "mariadb",
        version=version.version,
        flavor=FlavorSpec(ram_mb=flavor.ram, vcpus=flavor.vcpus),
        volume_size_gb=inst.volume_size or 1,
        databases=[DatabaseSpec.model_validate(d) for d in ctx.context.get("databases", [])],
        users=[UserSpec.model_validate(u) for u in users],
        overrides=config_values.overrides_of(ctx.session, inst),
    )


def wait_guest_healthy(ctx: StepContext) -> Wait | None:
    status = ctx.session.execute(
        select(ServiceStatus.status_id).where(ServiceStatus.instance_id == ctx.resource_id)
    ).scalar_one_or_none()
    if status == SS.HEALTHY.code:
        return None
    return Wait(timeout_s=PREPARE_DEADLINE_S)


def mark_active(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    inst.task_id = Task.NONE
    inst.task_description = Task.NONE.description
    inst.server_status = "ACTIVE"
    # Trove sends trove.instance.create here too: at the end of the build, guest healthy.
    notifications.emit(ctx.session, [notifications.instance_created(ctx.session, inst, ctx.context)])


def _provision_failed(session: Session, run: WorkflowRun) -> None:
    inst = session.get(Instance, run.resource_id)
    if inst is None or inst.deleted:
        return
    timed_out = "timed out" in (run.error or "") and "wait_guest_healthy" in (run.error or "")
    task = Task.BUILDING_ERROR_TIMEOUT_GA if timed_out else Task.BUILDING_ERROR_SERVER
    inst.task_id = task
    inst.task_description = task.description
    inst.server_status = "ERROR"
    record_fault(session, inst.id, run.error or "provisioning failed", f"workflow run {run.id}")
    if not _compensation_failed(session, run):
        # Server, volume and address are released: the ERROR row holds no quota any more
        # (its later delete releases nothing: functions/core/quotas.py).
        from functions.core import quotas

        quotas.release(session, inst.id)


def _compensation_failed(session: Session, run: WorkflowRun) -> bool:
    """A compensation that failed may have left the server or volume behind (an operator
    cleans up; the instance keeps its quota until deleted)."""
    from functions.core.models.platform import WorkflowStepLog

    return session.execute(
        select(WorkflowStepLog.id).where(
            WorkflowStepLog.run_id == run.id, WorkflowStepLog.outcome == runner.Outcome.COMPENSATION_FAILED
        ).limit(1)
    ).first() is not None


PROVISION = Workflow(
    "provision",
    [
        Step("reserve", reserve, release_address, retry=STEADY, timeout_s=30),
        Step("allocate_volume", allocate_volume, release_volume, retry=STEADY, timeout_s=30),
        Step("create_server", create_server, delete_server, retry=STEADY, timeout_s=60),
        Step("wait_guest_healthy", wait_guest_healthy, retry=STEADY, timeout_s=PREPARE_DEADLINE_S),
        Step("mark_active", mark_active, retry=STEADY, timeout_s=30),
    ],
    on_failure=_provision_failed,
)


# ---- teardown ----------------------------------------------------------------------------


def cancel_work(ctx: StepContext) -> None:
    """Stop any build or restart of this instance first, so nothing creates resources
    behind our back (a running step holds its run's lock: we wait for it)."""
    for run in runner.active_runs(ctx.session, ctx.resource_id or "", ("provision", "restart", "resize")):
        runner.cancel(ctx.session, run.id, "cancelled: the instance is being deleted")
    # A backup in flight dies with the server; its backups that completed stay (as Trove).
    from functions.core import backup_flow

    backup_flow.abandon_running(ctx.session, ctx.resource_id or "", "the instance was deleted during the backup")


def finish_delete(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    # Before the row changes: Trove reports the instance as it was while being deleted.
    notifications.emit(ctx.session, [notifications.instance_deleted(ctx.session, inst, ctx.context, ctx.now)])
    inst.deleted = True
    inst.deleted_at = ctx.now
    inst.server_status = "DELETED"
    row = ctx.session.execute(
        select(ServiceStatus).where(ServiceStatus.instance_id == inst.id).with_for_update()
    ).scalar_one_or_none()
    if row is not None:
        row.status_id, row.status_description = SS.DELETED.code, SS.DELETED.description
    # In the transaction that marks the row deleted; a retried step finds nothing to release.
    from functions.core import quotas

    quotas.release(ctx.session, inst.id)


def _teardown_failed(session: Session, run: WorkflowRun) -> None:
    inst = session.get(Instance, run.resource_id)
    if inst is not None and not inst.deleted:
        inst.server_status = "ERROR"
        record_fault(session, inst.id, run.error or "delete failed", f"workflow run {run.id}")


TEARDOWN = Workflow(
    "teardown",
    [
        Step("cancel_work", cancel_work, retry=STEADY, timeout_s=120),
        Step("stop_server", delete_server, retry=STEADY, timeout_s=60),
        Step("remove_volume", release_volume, retry=STEADY, timeout_s=60),
        Step("finish_delete", finish_delete, retry=STEADY, timeout_s=30),
    ],
    on_failure=_teardown_failed,
)


# ---- restart -----------------------------------------------------------------------------


def send_restart(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    ctx.context["requested_at"] = format_time(utcnow())
    _guest_call(ctx, inst, RestartRequested(instance_id=inst.id, overrides=config_values.overrides_of(ctx.session, inst)))


def wait_restarted(ctx: StepContext) -> Wait | None:
    row = ctx.session.execute(
        select(ServiceStatus).where(ServiceStatus.instance_id == ctx.resource_id)
    ).scalar_one_or_none()
    if row is not None and healthy_since(row, ctx.context.get("requested_at")):
        return None
    return Wait(timeout_s=RESTART_DEADLINE_S)


def healthy_since(row: ServiceStatus, requested_at: str | None) -> bool:
    if row.status_id != SS.HEALTHY.code or row.heartbeat_at is None or not requested_at:
        return False
    return row.heartbeat_at > parse_time(requested_at).replace(tzinfo=None)


def finish_restart(ctx: StepContext) -> None:
    inst = _instance(ctx.session, ctx.resource_id or "")
    if inst.task_id == Task.REBOOTING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description


def _restart_failed(session: Session, run: WorkflowRun) -> None:
    inst = session.get(Instance, run.resource_id)
    if inst is None or inst.deleted:
        return
    # As Trove: the task is reset whatever happened; the service status tells the truth.
    if inst.task_id == Task.REBOOTING:
        inst.task_id = Task.NONE
        inst.task_description = Task.NONE.description
    record_fault(session, inst.id, run.error or "restart failed", f"workflow run {run.id}")


RESTART = Workflow(
    "restart",
    [
        Step("send_restart", send_restart, retry=STEADY, timeout_s=60),
        Step("wait_restarted", wait_restarted, retry=STEADY, timeout_s=RESTART_DEADLINE_S),
        Step("finish_restart", finish_restart, retry=STEADY, timeout_s=30),
    ],
    on_failure=_restart_failed,
)

WORKFLOWS = {w.name: w for w in (PROVISION, TEARDOWN, RESTART)}


def resume_on_heartbeat(session: Session, instance: Instance, status: ServiceStatus) -> list[Message]:
    """The conductor's hook: a HEALTHY heartbeat completes a build's or restart's wait."""
    if status.status_id == SS.FAILED.code:
        return _fail_build(session, instance, status)
    if status.status_id != SS.HEALTHY.code:
        return []
    out: list[Message] = []
    for run in runner.active_runs(session, instance.id, ("provision", "restart", "resize", "upgrade")):
        if run.status != runner.RunStatus.WAITING:
            continue
        if run.workflow == "provision" and run.step == "wait_guest_healthy":
            nxt = runner.resume(session, PROVISION, run.id, "wait_guest_healthy")
        elif run.workflow == "restart" and run.step == "wait_restarted" and healthy_since(
            status, (run.context or {}).get("requested_at")
        ):
            nxt = runner.resume(session, RESTART, run.id, "wait_restarted")
        elif run.workflow == "resize" and run.step == "wait_resized" and healthy_since(
            status, (run.context or {}).get("requested_at")
        ):
            from functions.core.resizing import RESIZE

            nxt = runner.resume(session, RESIZE, run.id, "wait_resized")
        elif run.workflow == "upgrade" and run.step == "wait_upgraded" and healthy_since(
            status, (run.context or {}).get("requested_at")
        ):
            from functions.core.upgrades import UPGRADE

            nxt = runner.resume(session, UPGRADE, run.id, "wait_upgraded")
        else:
            continue
        if nxt is not None:
            out.append(nxt)
    return out




def _fail_build(session: Session, instance: Instance, status: ServiceStatus) -> list[Message]:
    """The guest gave up preparing (e.g. a backup failed verification): fail the build now
    with the guest's reason instead of waiting for the deadline."""
    out: list[Message] = []
    for run in runner.active_runs(session, instance.id, ("provision",)):
        if run.status == runner.RunStatus.WAITING and run.step == "wait_guest_healthy":
            reason = f"the guest could not prepare the instance: {status.guest_detail or 'failed'}"
            nxt = runner.fail_waiting(session, PROVISION, run.id, "wait_guest_healthy", reason)
            if nxt is not None:
                out.append(nxt)
    return out
