"""Small helpers shared by Trove's resource views."""

from __future__ import annotations

from typing import Any


def links(base_url: str, project_id: str, collection: str, resource_id: str) -> list[dict[str, Any]]:
    """Trove's self + bookmark links (Trove forces https; we keep the scheme that was used)."""
    return [
        {"href": f"{base_url}/v1.0/{project_id}/{collection}/{resource_id}", "rel": "self"},
        {"href": f"{base_url}/{collection}/{resource_id}", "rel": "bookmark"},
    ]
