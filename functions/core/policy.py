"""Who may call what: one explicit table, enforced at the HTTP edge (functions/api/_http.py).

Rules, as Trove's policy.yaml defaults:
  PUBLIC  no token needed (version discovery, the API description, metrics)
  OWNER   a member of the project named in the URL, or an administrator (Trove's
          `admin_or_owner`: an operator may act in any project)
  ADMIN   the admin role only (Trove's mgmt API); everyone else gets 403 (Trove says 401,
          which tells a client to re-authenticate for no reason)

Keys are operation names: every HTTP function of serverless.yaml by its name (checked by
tests/functions/test_policy.py), plus finer operations a handler checks itself with
`enforce` (an action inside `POST /instances/{id}/action`, say).
"""

from __future__ import annotations

from enum import StrEnum

from functions.core.auth import Identity
from functions.core.errors import Forbidden, Unauthorized


class Rule(StrEnum):
    PUBLIC = "public"
    OWNER = "admin_or_owner"
    ADMIN = "admin"


P, O, A = Rule.PUBLIC, Rule.OWNER, Rule.ADMIN

RULES: dict[str, Rule] = {
    # versions and descriptions
    "versions_index": P, "versions_show": P, "openapi_document": P, "api_docs": P, "metrics": P,
    # catalog
    "list_flavors": O, "show_flavor": O, "list_datastores": O, "show_datastore": O,
    "list_datastore_versions": O, "show_datastore_version": O, "show_datastore_version_by_id": O,
    "list_parameters": O, "show_parameter": O, "list_parameters_by_version": O, "show_parameter_by_version": O,
    "list_limits": O,
    # instances
    "create_instance": O, "list_instances": O, "list_instances_detail": O, "show_instance": O,
    "update_instance": O, "edit_instance": O, "delete_instance": O, "instance_action": O,
    "instance:reset_status": A,
    "show_instance_configuration": O,
    # databases, users, root
    "list_databases": O, "create_databases": O, "show_database": O, "delete_database": O,
    "list_users": O, "create_users": O, "change_passwords": O, "show_user": O, "update_user": O,
    "delete_user": O, "list_user_access": O, "grant_user_access": O, "revoke_user_access": O,
    "show_root": O, "enable_root": O, "disable_root": O,
    # configuration groups
    "create_configuration": O, "list_configurations": O, "show_configuration": O,
    "list_configuration_instances": O, "update_configuration": O, "edit_configuration": O,
    "delete_configuration": O,
    # backups
    "create_backup": O, "list_backups": O, "show_backup": O, "delete_backup": O, "list_instance_backups": O,
    "create_backup_strategy": O, "list_backup_strategies": O, "delete_backup_strategies": O,
    "create_backup_schedule": O, "list_backup_schedules": O, "show_backup_schedule": O,
    "delete_backup_schedule": O,
    # quotas: a member reads their own project's; only administrators change them
    "show_quotas": O, "update_quotas": A,
    # administrators (mgmt)
    "show_root_history": A, "mgmt_instance_action": A, "list_mgmt_instances": A,
    "list_mgmt_datastore_versions": A, "create_mgmt_datastore_version": A, "show_mgmt_datastore_version": A,
    "edit_mgmt_datastore_version": A, "delete_mgmt_datastore_version": A,
    "create_mgmt_flavor": A, "edit_mgmt_flavor": A, "delete_mgmt_flavor": A,
    "list_notifications": A,
}


def rule_for(operation: str) -> Rule:
    try:
        return RULES[operation]
    except KeyError:
        # An operation without a rule is a programming error caught by the policy test; at
        # run time it is refused rather than left open.
        return Rule.ADMIN


def enforce(operation: str, identity: Identity | None, project_id: str | None) -> None:
    """401 without an identity (for a non-public rule), 403 when the rule does not allow it."""
    rule = rule_for(operation)
    if rule == Rule.PUBLIC:
        return
    if identity is None:
        raise Unauthorized("Authentication required: send a token in X-Auth-Token.")
    if identity.is_admin:
        return
    if rule == Rule.ADMIN:
        raise Forbidden("This action is for administrators only.")
    if project_id is not None and identity.project_id != project_id:
        raise Forbidden(f"User with tenant id {identity.project_id} cannot access this resource.")
