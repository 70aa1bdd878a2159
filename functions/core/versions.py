"""Trove's API version documents (trove/versions.py), served without authentication."""

from __future__ import annotations

from typing import Any

V1 = {"id": "v1.0", "status": "CURRENT", "updated": "2012-08-01T00:00:00Z"}


def index(base_url: str) -> dict[str, Any]:
    return {"versions": [{**V1, "links": [{"rel": "self", "href": f"{base_url}/v1.0/"}]}]}


def show(base_url: str) -> dict[str, Any]:
    return {"version": {**V1, "links": [{"rel": "self", "href": f"{base_url}/v1.0/"}]}}
