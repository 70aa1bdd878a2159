"""Small helpers shared by Trove's resource views."""

from __future__ import annotations

from typing import Any


def links(base_url: str, project_id: str, collection: str, resource_id: str) -> list[dict[str, Any]]:
    """Trove's self + bookmark links (Trove forces https; we keep the scheme that was used)."""
    return [
        {"href": f"{base_url}/v1.0/{project_id}/{collection}/{resource_id}", "rel": "self"},
        {"href": f"{base_url}/{collection}/{resource_id}", "rel": "bookmark"},
    ]


def next_link(url: str, marker: str) -> list[dict[str, str]]:
    """Trove's paging link: the request URL with `marker` replaced (rel=next)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "marker"]
    query.append(("marker", marker))
    return [{"rel": "next", "href": urlunsplit(parts._replace(query=urlencode(query)))}]


PAGE_SIZE = 20


def page_size(limit: str | None, cap: int = PAGE_SIZE) -> int:
    """Trove's `min(limit or page_size, page_size)`: a client cannot ask for more than a page."""
    from functions.core.errors import BadRequest

    if limit in (None, ""):
        return cap
    try:
        value = int(limit)  # type: ignore[arg-type]
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {limit!r}") from None
    if value < 1:
        raise BadRequest("limit must be at least 1")
    return min(value, cap)
