"""Knative manifests rendered from serverless.yaml alone (through `infra.spec.load_spec`, the
loader the local platform uses), so the cluster and `troveless up` cannot disagree.

`render(spec)` returns a list of Kubernetes objects (plain dicts); `dump(objects)` writes them
as one multi-document YAML stream (`troveless render knative | kubectl apply -f -`).

What is rendered, per kind of trigger (see docs/deploy-knative.md):

- every function: a Knative Service (one image for all; functions-framework picks the
  function from FUNCTION_TARGET / FUNCTION_SOURCE / FUNCTION_SIGNATURE_TYPE), settings from
  one ConfigMap, secrets by reference (database URL, S3 keys, Keystone password);
- `event`: a Trigger on the Broker (exact match on `type` and the declared attributes), with
  the spec's delivery (defaults merged with the trigger's own), dead letters to the sink
  function's Service;
- `schedule`: a PingSource (the spec's cron; `local_interval_s` is the local platform's only);
- `http` / `webhook`: a Gateway API HTTPRoute (path + method) to the function's Service;
- every function that publishes (declares `emits`, or writes outbox rows: API verbs, webhooks,
  schedules): a SinkBinding that gives it K_SINK = the Broker.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.spec import FunctionSpec, Spec

IMAGE = "registry.example/troveless/functions:0.1.0"  # built from Containerfile
GUEST_IMAGE = "registry.example/troveless/guest-agent:0.1.0"  # built from Containerfile.guest
APP_DIR = "/app"  # where Containerfile puts the repository (FUNCTION_SOURCE is absolute)
GATEWAY = "troveless-gateway"  # the Gateway API Gateway the HTTPRoutes attach to
SETTINGS_CONFIGMAP = "troveless-settings"
PING_TYPE = "dev.knative.sources.ping"

SERVING = "serving.knative.dev/v1"
EVENTING = "eventing.knative.dev/v1"
SOURCES = "sources.knative.dev/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"

# Secrets are referenced, never rendered: (env name, Secret name, key). Create them with
# kubectl (docs/deploy-knative.md); the names are the env names of functions/settings.py.
SECRET_ENV = (
    ("TROVELESS_DATABASE_URL", "troveless-database", "url"),
    ("TROVELESS_S3_ACCESS_KEY_ID", "troveless-s3", "access-key-id"),
    ("TROVELESS_S3_SECRET_ACCESS_KEY", "troveless-s3", "secret-access-key"),
    ("TROVELESS_KEYSTONE_PASSWORD", "troveless-keystone", "password"),
)
# Non-secret settings (functions/settings.py), as a starting point to edit in the ConfigMap.
SETTINGS = {
    "TROVELESS_AUTH": "keystone",
    "TROVELESS_KEYSTONE_URL": "https://keystone.example:5000/v3",
    "TROVELESS_KEYSTONE_USERNAME": "troveless",
    "TROVELESS_KEYSTONE_PROJECT": "service",
    "TROVELESS_KEYSTONE_USER_DOMAIN": "Default",
    "TROVELESS_KEYSTONE_PROJECT_DOMAIN": "Default",
    "TROVELESS_KEYSTONE_CACHE_TTL": "60",
    "TROVELESS_BACKUP_STORE": "s3",
    "TROVELESS_BACKUP_CONTAINER": "database-backups",
    "TROVELESS_S3_ENDPOINT_URL": "https://s3.example",
    "TROVELESS_S3_REGION": "RegionOne",
    "TROVELESS_S3_PATH_STYLE": "false",
    "TROVELESS_BACKUP_STALL_TIMEOUT": "60",
    "TROVELESS_HEARTBEAT_INTERVAL": "5",
    "TROVELESS_LOG_FORMAT": "json",
    # Functions keep nothing on disk; scratch space for the few that need a directory.
    "TROVELESS_DATA_DIR": "/tmp/troveless",
    # Database servers on Nova/Cinder/Neutron; replace the placeholders with your network
    # and the CIDR the control plane's pods reach the instances from.
    "TROVELESS_COMPUTE": "openstack",
    "TROVELESS_OS_NETWORK_ID": "00000000-0000-0000-0000-000000000000",
    "TROVELESS_OS_CONTROL_CIDR": "10.0.0.0/8",
    "TROVELESS_OS_GUEST_PACKAGE": "troveless",
}
# openstacksdk's own credentials (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, ...):
# every key of this Secret becomes an environment variable of every function.
OPENSTACK_SECRET = "troveless-openstack"

# A Knative Service's request timeout: default 300 s, cluster maximum 600 s
# (`max-revision-timeout-seconds`). A Trigger's per-attempt timeout must stay below it,
# else the broker retries while the first attempt still runs.
HTTP_TIMEOUT_S = 60
TIMEOUT_MARGIN_S = 30
MAX_TIMEOUT_S = 600

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class RenderError(ValueError):
    """serverless.yaml cannot be expressed as valid manifests."""


def dns_label(name: str, limit: int = 63) -> str:
    """A DNS-1035 label (DNS-1123, starting with a letter) of at most `limit` characters;
    longer names are cut and get a stable 8-hex hash suffix so they stay unique."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = "f-" + label
    if len(label) > limit:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        label = label[: limit - 9].rstrip("-") + "-" + digest
    return label


def service_name(function: str) -> str:
    return dns_label(function)


def _ref(api_version: str, kind: str, name: str) -> dict[str, str]:
    return {"apiVersion": api_version, "kind": kind, "name": name}


def _meta(spec: Spec, name: str, namespace: str, function: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": dns_label(spec.service)}
    if function:
        labels["troveless.dev/function"] = service_name(function)
    return {"name": name, "namespace": namespace, "labels": labels}


def publishes(fn: FunctionSpec) -> bool:
    """Does this function post events to the broker itself (so it needs K_SINK)? Every
    function declaring `emits`, and the ones relaying the outbox rows they write."""
    return bool(fn.emits) or fn.trigger.kind in ("http", "webhook", "schedule")


def service_timeout_s(spec: Spec, name: str) -> int:
    """timeoutSeconds of the function's Service: above every delivery timeout that can hit it."""
    fn = spec.functions[name]
    if fn.trigger.event:
        delivery_s = spec.delivery_for(name).timeout_s
    elif fn.trigger.kind in ("http", "webhook"):
        return HTTP_TIMEOUT_S
    elif fn.trigger.sink:  # dead letters arrive under the delivery of the Trigger that failed
        delivery_s = max([spec.defaults.delivery.timeout_s] + [
            spec.delivery_for(n).timeout_s for n in spec.by_kind("event")
            if spec.delivery_for(n).dead_letter_sink == name])
    else:  # schedule: PingSource delivers with the defaults
        delivery_s = spec.defaults.delivery.timeout_s
    timeout = max(HTTP_TIMEOUT_S, math.ceil(delivery_s) + TIMEOUT_MARGIN_S)
    if timeout > MAX_TIMEOUT_S:
        raise RenderError(f"{name}: delivery timeout {delivery_s}s leaves no room below the "
                          f"{MAX_TIMEOUT_S}s cluster maximum of a Knative Service")
    return timeout


def knative_service(spec: Spec, name: str, namespace: str, image: str) -> dict[str, Any]:
    fn = spec.functions[name]
    annotations = {"autoscaling.knative.dev/min-scale": str(fn.scaling.min_scale)}
    if fn.scaling.max_scale:
        annotations["autoscaling.knative.dev/max-scale"] = str(fn.scaling.max_scale)
    env = [
        {"name": "FUNCTION_TARGET", "value": fn.target},
        {"name": "FUNCTION_SOURCE", "value": f"{APP_DIR}/{fn.source}"},
        {"name": "FUNCTION_SIGNATURE_TYPE", "value": fn.signature},
    ]
    template_spec: dict[str, Any] = {"timeoutSeconds": service_timeout_s(spec, name)}
    if fn.scaling.concurrency:
        # A hard limit per pod, the autoscaler's target, and as many gunicorn threads.
        template_spec["containerConcurrency"] = fn.scaling.concurrency
        annotations["autoscaling.knative.dev/target"] = str(fn.scaling.concurrency)
        env += [{"name": "THREADS", "value": str(fn.scaling.concurrency)}, {"name": "WORKERS", "value": "1"}]
    # The database is required (a pod must not fall back to a private SQLite file); S3 and
    # Keystone only matter with TROVELESS_BACKUP_STORE=s3 / TROVELESS_AUTH=keystone.
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key,
                                                     "optional": var != "TROVELESS_DATABASE_URL"}}}
        for var, secret, key in SECRET_ENV
    ]
    template_spec["containers"] = [{
        "name": "function",
        "image": image,
        "ports": [{"containerPort": 8080}],
        "env": env,
        "envFrom": [{"configMapRef": {"name": SETTINGS_CONFIGMAP}},
                    {"secretRef": {"name": OPENSTACK_SECRET, "optional": True}}],
    }]
    meta = _meta(spec, service_name(name), namespace, name)
    # Reached through the broker or the HTTPRoutes only: no public Knative route of its own.
    meta["labels"]["networking.knative.dev/visibility"] = "cluster-local"
    return {
        "apiVersion": SERVING,
        "kind": "Service",
        "metadata": meta,
        "spec": {"template": {"metadata": {"annotations": annotations}, "spec": template_spec}},
    }


def _delivery(spec: Spec, name: str | None) -> dict[str, Any]:
    d = spec.delivery_for(name) if name else spec.defaults.delivery
    out: dict[str, Any] = {
        "retry": d.retry,
        "backoffPolicy": d.backoff_policy,
        "backoffDelay": d.backoff_delay,
        "timeout": d.timeout,
    }
    if d.dead_letter_sink:
        out["deadLetterSink"] = {"ref": _ref(SERVING, "Service", service_name(d.dead_letter_sink))}
    return out


def broker(spec: Spec, namespace: str) -> dict[str, Any]:
    meta = _meta(spec, spec.broker, namespace)
    # The cluster's default class (config-br-defaults) unless changed here: Kafka in
    # production (durable, partition ordering), MTChannelBasedBroker + IMC only for trials.
    meta["annotations"] = {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}
    return {"apiVersion": EVENTING, "kind": "Broker", "metadata": meta,
            "spec": {"delivery": _delivery(spec, None)}}


def trigger(spec: Spec, name: str, namespace: str) -> dict[str, Any]:
    event = spec.functions[name].trigger.event
    assert event is not None
    # Legacy `filter.attributes` (exact match on every listed attribute) works on every broker
    # class and is exactly the local broker's `EventTrigger.matches`.
    return {
        "apiVersion": EVENTING,
        "kind": "Trigger",
        "metadata": _meta(spec, service_name(name), namespace, name),
        "spec": {
            "broker": spec.broker,
            "filter": {"attributes": {"type": event.type, **event.attributes}},
            "subscriber": {"ref": _ref(SERVING, "Service", service_name(name))},
            "delivery": _delivery(spec, name),
        },
    }


def ping_source(spec: Spec, name: str, namespace: str) -> dict[str, Any]:
    schedule = spec.functions[name].trigger.schedule
    assert schedule is not None
    out: dict[str, Any] = {
        "apiVersion": SOURCES,
        "kind": "PingSource",
        "metadata": _meta(spec, service_name(name), namespace, name),
        "spec": {
            "schedule": schedule.cron,
            "timezone": "Etc/UTC",
            "contentType": "application/json",
            "sink": {"ref": _ref(SERVING, "Service", service_name(name))},
        },
    }
    out["spec"]["data"] = json.dumps(schedule.data, sort_keys=True)
    return out


def sink_binding(spec: Spec, name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": SOURCES,
        "kind": "SinkBinding",
        "metadata": _meta(spec, service_name(name), namespace, name),
        "spec": {
            "subject": _ref(SERVING, "Service", service_name(name)),
            "sink": {"ref": _ref(EVENTING, "Broker", spec.broker)},
        },
    }


# ---- HTTP routing ------------------------------------------------------------------------
#
# Path templates become Gateway API path matches:
# - no parameter: `Exact` (with and without the trailing slash, as the local gateway accepts);
#   Exact has the highest precedence in Gateway API;
# - with {params}: `RegularExpression`, anchored, one `[^/]+` per parameter, optional trailing
#   slash. `PathPrefix` cannot express a parameter in the middle of a path (and would swallow
#   longer paths), so it is not used.
# Gateway API leaves the precedence between RegularExpression matches to the implementation,
# so overlapping templates are made disjoint instead of relying on order: where the local
# gateway prefers route A over route B (fewer parameters first, then serverless.yaml order)
# and both can match one path, B's pattern leaves out exactly A's paths: at each parameter
# of B where A has a literal word, B branches on that word (RE2 has no lookahead, so "any
# segment but these words" is spelled out by `_segment_except`).
# tests/infra/test_knative.py checks the result against the local gateway path by path.


@dataclass(frozen=True)
class Route:
    function: str
    method: str
    template: str

    @property
    def segments(self) -> list[str]:
        return [s for s in self.template.strip("/").split("/") if s] if self.template.strip("/") else []

    def is_param(self, i: int) -> bool:
        return bool(_PARAM.fullmatch(self.segments[i]))

    @property
    def n_params(self) -> int:
        return len(_PARAM.findall(self.template))


def routes(spec: Spec) -> list[Route]:
    """Every API path + method (http triggers) and webhook URL (POST), in the local
    gateway's order of preference (fewest parameters first, then serverless.yaml order)."""
    out = []
    for name, fn in spec.functions.items():
        if fn.trigger.http:
            out.append(Route(name, fn.trigger.http.method, fn.trigger.http.path))
        elif fn.trigger.webhook:
            out.append(Route(name, "POST", fn.trigger.webhook.path))
    return sorted(out, key=lambda r: r.n_params)


def _overlap(a: Route, b: Route) -> bool:
    sa, sb = a.segments, b.segments
    if a.method != b.method or len(sa) != len(sb):
        return False
    return all(a.is_param(i) or b.is_param(i) or sa[i] == sb[i] for i in range(len(sa)))


def _conflicts(all_routes: list[Route]) -> dict[int, list[dict[int, str]]]:
    """Route index -> the paths it must leave to routes the local gateway prefers, each as
    {segment index: literal word} (a path with all of those words is not this route's)."""
    out: dict[int, list[dict[int, str]]] = {}
    for j, b in enumerate(all_routes):
        for a in all_routes[:j]:
            if not _overlap(a, b):
                continue
            taken = {i: a.segments[i] for i in range(len(b.segments)) if b.is_param(i) and not a.is_param(i)}
            if not taken:
                raise RenderError(f"{a.function} and {b.function} serve the same {a.method} paths")
            out.setdefault(j, []).append(taken)
    return out


def _class_escape(chars: Iterable[str]) -> str:
    return "".join("\\" + c if c in "]\\^-[" else c for c in sorted(set(chars)))


def _segment_except(words: set[str]) -> str:
    """An RE2 pattern for one non-empty path segment that is none of `words`."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node["$"] = {}

    def build(node: dict[str, Any], empty_ok: bool) -> str:
        children = sorted(c for c in node if c != "$")
        alternatives = [f"[^/{_class_escape(children)}][^/]*"]
        for ch in children:
            child = node[ch]
            alternatives.append(re.escape(ch) + build(child, "$" not in child))
        body = "(?:" + "|".join(alternatives) + ")"
        return body + "?" if empty_ok else body

    return build(trie, empty_ok=False)


def _segments_pattern(route: Route, conflicts: list[dict[int, str]]) -> str:
    """The route's segments as a pattern that matches none of the `conflicts` paths: at each
    parameter, branch on the conflicting words still possible there (exact set difference,
    no lookahead)."""
    segments = route.segments

    def build(pos: int, alive: list[dict[int, str]]) -> str | None:
        if pos == len(segments):
            # A conflict whose every word matched is another route's path.
            return None if alive else ""
        sep = "/"
        if not route.is_param(pos):
            rest = build(pos + 1, alive)
            return None if rest is None else sep + re.escape(segments[pos]) + rest
        words = sorted({c[pos] for c in alive if pos in c})
        if not words:
            rest = build(pos + 1, alive)
            return None if rest is None else sep + "[^/]+" + rest
        branches = []
        for word in words:
            rest = build(pos + 1, [c for c in alive if c.get(pos, word) == word])
            if rest is not None:
                branches.append(sep + re.escape(word) + rest)
        rest = build(pos + 1, [c for c in alive if pos not in c])
        if rest is not None:
            branches.append(sep + _segment_except(set(words)) + rest)
        if not branches:
            return None
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    pattern = build(0, conflicts)
    if pattern is None:
        raise RenderError(f"{route.function}: every path of {route.template} belongs to another route")
    return pattern


def path_match(route: Route, conflicts: list[dict[int, str]] | None = None) -> list[dict[str, str]]:
    segments = route.segments
    if not route.n_params:
        path = "/" + "/".join(segments)
        exact = [path] if path == "/" else [path, path + "/"]
        return [{"type": "Exact", "value": p} for p in exact]
    return [{"type": "RegularExpression", "value": "^" + _segments_pattern(route, conflicts or []) + "/?$"}]


def http_routes(spec: Spec, namespace: str, gateway: str = GATEWAY) -> list[dict[str, Any]]:
    """One HTTPRoute per function (a route holds at most 16 rules; one each keeps names stable).

    backendRefs name the Knative Service's Kubernetes Service (same name, port 80, created by
    Knative for every ksvc) and rewrite Host to the Service's cluster-local domain, so the
    Knative local gateway (net-gateway-api, Kourier or Istio) picks the current revision,
    exactly as for a call from inside the cluster."""
    ordered = routes(spec)
    conflicts = _conflicts(ordered)
    out = []
    for j, route in enumerate(ordered):
        svc = service_name(route.function)
        matches = [{"path": p, "method": route.method} for p in path_match(route, conflicts.get(j))]
        out.append({
            "apiVersion": GATEWAY_API,
            "kind": "HTTPRoute",
            "metadata": _meta(spec, svc, namespace, route.function),
            "spec": {
                "parentRefs": [{"name": gateway}],
                "rules": [{
                    "matches": matches,
                    "filters": [{"type": "URLRewrite",
                                 "urlRewrite": {"hostname": f"{svc}.{namespace}.svc.cluster.local"}}],
                    "backendRefs": [{"kind": "Service", "name": svc, "port": 80}],
                }],
            },
        })
    return out


def settings_configmap(spec: Spec, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, SETTINGS_CONFIGMAP, namespace),
            "data": dict(SETTINGS)}


def check_unique_targets(spec: Spec) -> None:
    """One image serves every function: a source module must not hold two with one target
    (load_spec already refuses duplicate targets anywhere; this guards the image's view)."""
    seen: dict[tuple[str, str], str] = {}
    for name, fn in spec.functions.items():
        key = (fn.source, fn.target)
        if key in seen:
            raise RenderError(f"{seen[key]} and {name} are both {fn.source}:{fn.target}")
        seen[key] = name


def render(spec: Spec, *, namespace: str | None = None, image: str = IMAGE,
           gateway: str = GATEWAY) -> list[dict[str, Any]]:
    namespace = namespace or spec.namespace
    check_unique_targets(spec)
    for name in spec.by_kind("event"):  # name the Trigger whose timeout is too long first
        service_timeout_s(spec, name)
    names = [service_name(n) for n in spec.functions]
    if len(set(names)) != len(names):
        raise RenderError("two functions map to the same Kubernetes name")
    objects: list[dict[str, Any]] = [settings_configmap(spec, namespace), broker(spec, namespace)]
    objects += [knative_service(spec, name, namespace, image) for name in spec.functions]
    objects += [trigger(spec, name, namespace) for name in spec.by_kind("event")]
    objects += [ping_source(spec, name, namespace) for name in spec.by_kind("schedule")]
    objects += [sink_binding(spec, name, namespace) for name, fn in spec.functions.items() if publishes(fn)]
    objects += http_routes(spec, namespace, gateway)
    for obj in objects:
        if not _DNS_LABEL.match(obj["metadata"]["name"]) or len(obj["metadata"]["name"]) > 63:
            raise RenderError(f"{obj['kind']} name {obj['metadata']['name']!r} is not a DNS label")
    return objects


def dump(objects: list[dict[str, Any]]) -> str:
    header = "# Rendered from serverless.yaml by `troveless render knative`; do not edit.\n"
    return header + yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=200)


def write(objects: list[dict[str, Any]], out_dir: str) -> list[str]:
    """One file per kind (00-configmap.yaml, 10-broker.yaml, ...), in apply order."""
    order = ["ConfigMap", "Broker", "Service", "Trigger", "PingSource", "SinkBinding", "HTTPRoute"]
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i, kind in enumerate(order):
        chosen = [o for o in objects if o["kind"] == kind]
        if chosen:
            path = directory / f"{i:02d}-{kind.lower()}.yaml"
            path.write_text(dump(chosen), encoding="utf-8")
            written.append(str(path))
    return written
