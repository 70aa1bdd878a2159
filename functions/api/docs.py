"""The API's description: the OpenAPI 3.1 document and a browsable page of it (no token).

The document is generated from serverless.yaml and the request models by infra/openapi.py
(`troveless openapi`) and shipped with the code, so this function needs neither the
registry nor the other functions' modules at run time."""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any

import flask
import functions_framework

from functions.api._http import ApiRequest, api


@cache
def _document_text() -> str:
    return resources.files("functions.api").joinpath("openapi.json").read_text(encoding="utf-8")


@functions_framework.http
@api("GET", "/openapi.json", auth=False)
def openapi_document(req: ApiRequest):  # type: ignore[no-untyped-def]
    """The OpenAPI 3.1 document."""
    return flask.Response(_document_text(), status=200, mimetype="application/json")


@functions_framework.http
@api("GET", "/docs", auth=False)
def api_docs(req: ApiRequest):  # type: ignore[no-untyped-def]
    """A browsable page of the API: every operation, who may call it, its request body."""
    return flask.Response(render_page(json.loads(_document_text())), status=200, mimetype="text/html")


def render_page(doc: dict[str, Any]) -> str:
    """Plain HTML, no scripts: readable offline and behind any proxy."""
    esc = html.escape
    rows: list[str] = []
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    for tag in sorted(by_tag):
        rows.append(f"<h2 id='{esc(tag)}'>{esc(tag)}</h2>")
        for method, path, op in by_tag[tag]:
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            ref = body.get("properties", {}) if body else {}
            model = ", ".join(f"<code>{esc(k)}</code>: <a href='#schema-{esc(v['$ref'].rsplit('/', 1)[-1])}'>"
                              f"{esc(v['$ref'].rsplit('/', 1)[-1])}</a>" for k, v in ref.items() if "$ref" in v)
            rows.append(
                f"<div class='op'><span class='m {method.lower()}'>{method}</span> <code>{esc(path)}</code>"
                f" <span class='p'>{esc(op.get('x-policy', ''))}</span><br>{esc(op['summary'])}"
                f"{'<br>body: ' + model if model else ''}</div>"
            )
    rows.append("<h2>Schemas</h2>")
    for name, schema in sorted(doc["components"]["schemas"].items()):
        rows.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3><pre>{esc(json.dumps(schema, indent=2))}</pre>")
    toc = " · ".join(f"<a href='#{esc(t)}'>{esc(t)}</a>" for t in sorted(by_tag))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Troveless API</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
        ".op{margin:.4em 0;padding:.3em;border-left:3px solid #ccc}.m{font-weight:bold;display:inline-block;width:4em}"
        ".get{color:#06c}.post{color:#080}.put,.patch{color:#a60}.delete{color:#c00}.p{color:#777;font-size:90%}"
        "pre{background:#f6f6f6;padding:.5em;overflow:auto}</style></head><body>"
        f"<h1>{esc(doc['info']['title'])} API {esc(doc['info']['version'])}</h1>"
        f"<p>{esc(doc['info']['description'])} The machine-readable document: <a href='/openapi.json'>/openapi.json</a>."
        f" Send a token in <code>X-Auth-Token</code>.</p><p>{toc}</p>{''.join(rows)}</body></html>"
    )
