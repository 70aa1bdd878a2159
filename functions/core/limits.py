"""`GET /limits`: the project's absolute limits (its quotas: per-project overrides, else the
settings' defaults), then one entry per API rate limit with what is left of its window."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from functions.core import quotas


def absolute(session: Session, project_id: str) -> dict[str, int]:
    return quotas.limits(session, project_id)


def view(limits: dict[str, int], rates: list[dict[str, Any]] | None = None) -> dict[str, object]:
    return {
        "limits": [
            {
                "verb": "ABSOLUTE",
                "max_instances": limits["instances"],
                "max_ram": limits["ram"],
                "max_volumes": limits["volumes"],
                "max_backups": limits["backups"],
            },
            *(rates or []),
        ]
    }
