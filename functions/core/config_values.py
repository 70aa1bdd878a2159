"""A configuration group's stored values, and what an instance's guest must run with.

Kept apart from `configurations` so the workflows (provisioning, resize, admin start) can
read an instance's overrides without depending on the API-facing use cases."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from functions.core import catalog, config_rules, names
from functions.core.models.configuration import Configuration, ConfigurationParameter
from functions.core.models.instance import Instance


def stored(session: Session, config_id: str) -> dict[str, Any]:
    """The group's values as the client gave them (JSON keeps their types)."""
    rows = session.execute(
        select(ConfigurationParameter.configuration_key, ConfigurationParameter.configuration_value)
        .where(ConfigurationParameter.configuration_id == config_id, ConfigurationParameter.deleted.is_(False))
        .order_by(ConfigurationParameter.configuration_key)
    ).all()
    return {key: json.loads(value) if value is not None else None for key, value in rows}


def normalised(session: Session, config_id: str) -> dict[str, Any]:
    """The group's values as the guest takes them: canonical names, values in the
    setting's own unit (config_rules.validate)."""
    config = session.get(Configuration, config_id)
    if config is None:
        return {}
    _, version = catalog.by_version_id(session, config.datastore_version_id)
    return config_rules.validate(names.kind_of(version.manager), stored(session, config.id))


def overrides_of(session: Session, instance: Instance) -> dict[str, Any]:
    """What the instance's server must run with ({} without a group). Every command that
    (re)starts the server carries this, so a restart always converges on the database."""
    return normalised(session, instance.configuration_id) if instance.configuration_id else {}
