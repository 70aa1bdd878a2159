"""Databases, users, access and root of a running instance (Trove §1.5), via its guest.

Every operation is a synchronous, signed command to the instance's guest agent, bounded by
the guest client's timeout. The API answers 202 for changes only once the server has made
them, so a client listing right after sees them. No database transaction is held while
the guest works: the handler reads the target, closes its transaction, then calls.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from events import guest as g
from events import registry
from events.base import Event
from functions.core import instances, names
from functions.core.errors import BadRequest, NotFound, UnprocessableEntity
from functions.core.models.base import utcnow
from functions.core.models.instance import RootEnabledHistory
from functions.core.ports import Guest, GuestError
from functions.core.states import ServiceStatus as SS
from functions.core.states import Task
from functions.core.views import page_size

ROOT_PASSWORD_LENGTH = 36
_READY = {SS.HEALTHY.code, SS.RUNNING.code}


@dataclass(frozen=True)
class Target:
    instance_id: str
    address: str
    secret: bytes
    kind: str  # "postgresql" | "mariadb"


def target(session: Session, project_id: str, instance_id: str) -> Target:
    """The instance, if its datastore is up (Trove's load_and_verify: else 422)."""
    row = instances.get_row(session, project_id, instance_id, with_fault=False)
    inst = row.instance
    ready = (
        Task(inst.task_id) in (Task.NONE, Task.RESTART_REQUIRED)
        and (inst.server_status or "").upper() == "ACTIVE"
        and row.service is not None
        and row.service.status_id in _READY
    )
    address = (inst.addresses or [{}])[0].get("address")
    if not ready or not address or not inst.encrypted_key:
        raise UnprocessableEntity(f"Instance {instance_id} is not ready.")
    return Target(inst.id, address, bytes.fromhex(inst.encrypted_key), names.kind_of(row.version.manager))


def call(guest: Guest, t: Target, command: Event, expect: type[Event]) -> Event:
    try:
        reply = guest.send(t.instance_id, t.address, t.secret, command)
    except GuestError as exc:
        if exc.reason == "not_found":
            raise NotFound(str(exc)) from exc
        if exc.reason in ("exists", "invalid"):
            raise BadRequest(str(exc)) from exc
        raise UnprocessableEntity(
            f"Instance {t.instance_id} is not ready: its guest agent did not complete the request ({exc})."
        ) from exc
    if reply is None:
        raise UnprocessableEntity(f"Instance {t.instance_id}: the guest agent sent no answer.")
    event = registry.parse(reply)
    if not isinstance(event, expect):
        raise UnprocessableEntity(f"Instance {t.instance_id}: unexpected answer {reply.type}.")
    return event



# ---- databases ---------------------------------------------------------------------------


def list_databases(guest: Guest, t: Target, limit: str | None, marker: str | None) -> tuple[list[dict[str, Any]], str | None]:
    reply = call(guest, t, g.ListDatabasesRequested(instance_id=t.instance_id, limit=page_size(limit), marker=marker or None),
                  g.DatabasesListed)
    return [{"name": d.name} for d in reply.databases], reply.next_marker  # type: ignore[attr-defined]


def parse_databases(kind: str, body: Any) -> list[g.DatabaseSpec]:
    items = body.get("databases") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest("Validation error: 'databases' must be a non-empty list.")
    specs, seen = [], set()
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("Validation error: each database must be an object with a 'name'.")
        name = names.check_database(kind, item.get("name"))
        if name in seen:
            raise BadRequest(f"Database '{name}' appears more than once.")
        seen.add(name)
        specs.append(g.DatabaseSpec(name=name, character_set=_opt(item, "character_set"), collate=_opt(item, "collate")))
    return specs


def create_databases(guest: Guest, t: Target, specs: list[g.DatabaseSpec]) -> None:
    call(guest, t, g.CreateDatabasesRequested(instance_id=t.instance_id, databases=specs), g.CommandCompleted)


def delete_database(guest: Guest, t: Target, name: str) -> None:
    name = names.check_database(t.kind, name)
    call(guest, t, g.DeleteDatabaseRequested(instance_id=t.instance_id, name=name), g.CommandCompleted)


# ---- users -------------------------------------------------------------------------------


def user_ref(kind: str, path_value: str) -> g.UserRef:
    """`name` or `name@host` from the URL path (already percent-decoded by the server;
    troveclient quotes it, with '.' as %2e), host `%` by default, as Trove."""
    text = path_value
    name, _, host = text.rpartition("@") if "@" in text else (text, "", "")
    return g.UserRef(name=names.check_user(kind, name), host=names.check_host(kind, host or None))


def user_view(user: g.UserInfo) -> dict[str, Any]:
    return {"name": user.name, "host": user.host, "databases": [{"name": d} for d in user.databases]}


def list_users(guest: Guest, t: Target, limit: str | None, marker: str | None) -> tuple[list[dict[str, Any]], str | None]:
    reply = call(guest, t, g.ListUsersRequested(instance_id=t.instance_id, limit=page_size(limit), marker=marker or None),
                  g.UsersListed)
    return [user_view(u) for u in reply.users], reply.next_marker  # type: ignore[attr-defined]


def show_user(guest: Guest, t: Target, ref: g.UserRef) -> dict[str, Any]:
    reply = call(guest, t, g.ShowUserRequested(instance_id=t.instance_id, user=ref), g.UserShown)
    return user_view(reply.user)  # type: ignore[attr-defined]


def parse_users(kind: str, body: Any, *, password_required: bool = True) -> list[g.UserSpec]:
    items = body.get("users") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest("Validation error: 'users' must be a non-empty list.")
    specs, seen = [], set()
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("Validation error: each user must be an object with 'name' and 'password'.")
        name = names.check_user(kind, item.get("name"))
        host = names.check_host(kind, item.get("host"))
        if (name, host) in seen:
            raise BadRequest(f"User '{name}@{host}' appears more than once.")
        seen.add((name, host))
        password = names.check_password(item.get("password")) if password_required or "password" in item else ""
        dbs = item.get("databases") or []
        if not isinstance(dbs, list) or not all(isinstance(d, dict) for d in dbs):
            raise BadRequest("Validation error: 'databases' must be a list of objects with a 'name'.")
        specs.append(g.UserSpec(name=name, password=password, host=host,
                                databases=[names.check_database(kind, d.get("name")) for d in dbs]))
    return specs


def create_users(guest: Guest, t: Target, specs: list[g.UserSpec]) -> None:
    call(guest, t, g.CreateUsersRequested(instance_id=t.instance_id, users=specs), g.CommandCompleted)


def delete_user(guest: Guest, t: Target, ref: g.UserRef) -> None:
    call(guest, t, g.DeleteUserRequested(instance_id=t.instance_id, user=ref), g.CommandCompleted)


def update_user(guest: Guest, t: Target, ref: g.UserRef, body: Any) -> None:
    attrs = body.get("user") if isinstance(body, dict) else None
    if not isinstance(attrs, dict) or not ({"name", "password", "host"} & attrs.keys()):
        raise BadRequest("Validation error: 'user' must hold at least one of name, password, host.")
    command = g.UpdateUserRequested(
        instance_id=t.instance_id,
        user=ref,
        name=names.check_user(t.kind, attrs["name"]) if attrs.get("name") is not None else None,
        password=names.check_password(attrs["password"]) if attrs.get("password") is not None else None,
        host=names.check_host(t.kind, attrs["host"]) if attrs.get("host") is not None else None,
    )
    call(guest, t, command, g.CommandCompleted)


def change_passwords(guest: Guest, t: Target, body: Any) -> None:
    specs = parse_users(t.kind, body)
    changes = [g.PasswordChange(name=s.name, host=s.host, password=s.password) for s in specs]
    call(guest, t, g.ChangePasswordsRequested(instance_id=t.instance_id, users=changes), g.CommandCompleted)


# ---- access ------------------------------------------------------------------------------


def list_access(guest: Guest, t: Target, ref: g.UserRef) -> list[dict[str, str]]:
    return show_user(guest, t, ref)["databases"]


def grant_access(guest: Guest, t: Target, ref: g.UserRef, body: Any) -> None:
    items = body.get("databases") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(d, dict) for d in items):
        raise BadRequest("Validation error: 'databases' must be a non-empty list of objects with a 'name'.")
    dbs = [names.check_database(t.kind, d.get("name")) for d in items]
    call(guest, t, g.GrantAccessRequested(instance_id=t.instance_id, user=ref, databases=dbs), g.CommandCompleted)


def revoke_access(guest: Guest, t: Target, ref: g.UserRef, database: str) -> None:
    name = names.check_database(t.kind, database)
    call(guest, t, g.RevokeAccessRequested(instance_id=t.instance_id, user=ref, database=name), g.CommandCompleted)


# ---- root --------------------------------------------------------------------------------


def root_enabled(session: Session, instance_id: str) -> bool:
    row = session.get(RootEnabledHistory, instance_id)
    return row is not None and row.disabled_at is None


def generate_password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(ROOT_PASSWORD_LENGTH))


def root_password(body: Any) -> str:
    """The password given in an optional {"password": ...} body, or a generated one."""
    if isinstance(body, dict) and body.get("password") is not None:
        password = names.check_password(body["password"])
        if len(password) < 8:
            raise BadRequest("The root password is invalid: use at least 8 characters.")
        return password
    return generate_password()


def enable_root(guest: Guest, t: Target, password: str) -> str:
    reply = call(guest, t, g.EnableRootRequested(instance_id=t.instance_id, password=password), g.RootEnabled)
    return reply.name  # type: ignore[attr-defined]


def record_root_enabled(session: Session, instance_id: str, user_id: str) -> None:
    row = session.get(RootEnabledHistory, instance_id)
    if row is None:
        session.add(RootEnabledHistory(id=instance_id, user=user_id, created=utcnow()))
    else:
        row.user, row.created, row.disabled_at = user_id, utcnow(), None


def require_root_history(session: Session, instance_id: str) -> None:
    if session.get(RootEnabledHistory, instance_id) is None:
        raise NotFound(f"No root history found for instance {instance_id}.")


def disable_root(guest: Guest, t: Target) -> None:
    call(guest, t, g.DisableRootRequested(instance_id=t.instance_id), g.CommandCompleted)


def record_root_disabled(session: Session, instance_id: str) -> None:
    row = session.get(RootEnabledHistory, instance_id)
    if row is not None:
        row.disabled_at = utcnow()


def root_history(session: Session, instance_id: str) -> dict[str, Any]:
    """Mgmt view: {"root_history": {"id", "enabled": <time>|"Never", "user": <id>|"Nobody"}}."""
    row = session.execute(select(RootEnabledHistory).where(RootEnabledHistory.id == instance_id)).scalar_one_or_none()
    return {
        "root_history": {
            "id": instance_id,
            "enabled": row.created.replace(microsecond=0).isoformat() if row else "Never",
            "user": row.user if row else "Nobody",
        }
    }


def _opt(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 64 or not all(c.isalnum() or c in "_-." for c in value):
        raise BadRequest(f"Validation error: '{key}' {value!r} is not a valid name.")
    return value


# ---- configuration ------------------------------------------------------------------------


def default_configuration(guest: Guest, t: Target) -> dict[str, Any]:
    """Trove's rendered default template: the platform's own settings for the flavor."""
    reply = call(guest, t, g.ShowConfigurationRequested(instance_id=t.instance_id), g.ConfigurationShown)
    return dict(sorted(reply.values.items()))  # type: ignore[attr-defined]
