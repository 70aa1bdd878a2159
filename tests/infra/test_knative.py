"""The Knative manifests rendered from serverless.yaml, checked without a cluster.

- structure: every object against the published CRD schema of its kind (vendored in
  tests/fixtures/crds/, see the README there) with jsonschema, plus unknown-field checks the
  CRDs leave to Knative's webhooks (`x-kubernetes-preserve-unknown-fields`);
- cross-references: subscribers, sinks and backends exist, emitted types have Triggers,
  durations parse and per-attempt timeouts stay below the Services' timeouts, names are
  DNS labels, one image can hold every function;
- agreement with the local platform: routes, triggers and schedules of `troveless up`
  (built from the same `load_spec`) equal the rendered HTTPRoutes, Triggers and PingSources.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from events.schedule import PING_SOURCE_PREFIX
from infra import cli, knative
from infra.durations import parse_duration
from infra.local.broker import LocalBroker
from infra.local.functions_host import Gateway
from infra.local.scheduler import Scheduler
from infra.spec import REPO_ROOT, Spec, load_spec
from tests.infra.platform_helpers import TEST_SPEC

CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
SPECS = {"product": None, "tests": TEST_SPEC}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Fields Knative accepts under a `x-kubernetes-preserve-unknown-fields` node that its CRD
# schema does not list (feature-flagged fields; delivery timeout is on by default).
# At the top level: the type and object metadata (some CRDs list them, some do not).
EXTRA_FIELDS = {"delivery": {"timeout"}, "": {"apiVersion", "kind", "metadata"}}


def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(CRDS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[(f"{doc['group']}/{doc['version']}", doc["kind"])] = doc["openAPIV3Schema"]
    return out


SCHEMAS = _schemas()


@pytest.fixture(scope="module", params=list(SPECS))
def spec(request) -> Spec:  # type: ignore[no-untyped-def]
    return load_spec(SPECS[request.param])


@pytest.fixture(scope="module")
def objects(spec: Spec) -> list[dict[str, Any]]:
    # Through YAML and back: what kubectl would read.
    return [o for o in yaml.safe_load_all(knative.dump(knative.render(spec))) if o]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    chosen = [o for o in objects if o["kind"] == kind]
    by_name = {o["metadata"]["name"]: o for o in chosen}
    assert len(by_name) == len(chosen), f"two {kind}s share a name"
    return by_name


def _env(service: dict[str, Any]) -> dict[str, Any]:
    container = service["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ---- structure ---------------------------------------------------------------------------


def _unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys the schema does not declare: pruned silently by the API server where the schema
    is closed, and left to Knative's webhooks where it preserves unknown fields. Both are
    errors for us (a typo would vanish, or be rejected only at apply time)."""
    errors = []
    if isinstance(instance, dict) and "properties" in schema:
        props = schema["properties"]
        allowed = set(props) | EXTRA_FIELDS.get(path.rsplit(".", 1)[-1], set())
        errors += [f"{path}.{key}" for key in instance if key not in allowed]
        for key, value in instance.items():
            if key in props:
                errors += _unknown_fields(value, props[key], f"{path}.{key}")
    elif isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in instance.items():
            errors += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            errors += _unknown_fields(value, schema["items"], f"{path}[{i}]")
    return errors


def _check_core(obj: dict[str, Any]) -> None:
    """Core kinds have no CRD: the fields we emit, checked by hand."""
    assert obj["apiVersion"] == "v1" and obj["kind"] == "ConfigMap"
    assert set(obj) == {"apiVersion", "kind", "metadata", "data"}
    for key, value in obj["data"].items():
        assert re.fullmatch(r"[-._a-zA-Z0-9]+", key) and isinstance(value, str), key


def test_every_object_matches_its_crd_schema(objects: list[dict[str, Any]]) -> None:
    kinds = set()
    for obj in objects:
        meta = obj["metadata"]
        assert set(meta) <= {"name", "namespace", "labels", "annotations"}
        assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        assert DNS_LABEL.match(meta["namespace"])
        assert all(isinstance(v, str) for v in {**meta.get("labels", {}), **meta.get("annotations", {})}.values())
        if obj["kind"] == "ConfigMap":
            _check_core(obj)
            continue
        schema = SCHEMAS[(obj["apiVersion"], obj["kind"])]
        jsonschema.Draft7Validator(schema).validate(obj)
        assert _unknown_fields(obj, schema) == [], obj["metadata"]["name"]
        kinds.add(obj["kind"])
    assert {"Service", "Broker", "Trigger", "PingSource", "SinkBinding", "HTTPRoute"} <= kinds


def test_schema_checks_catch_mistakes(objects: list[dict[str, Any]]) -> None:
    trigger = next(o for o in objects if o["kind"] == "Trigger")
    schema = SCHEMAS[(trigger["apiVersion"], "Trigger")]
    typo = json.loads(json.dumps(trigger))
    typo["spec"]["delivery"]["backofDelay"] = typo["spec"]["delivery"].pop("backoffDelay")
    assert _unknown_fields(typo, schema) == [".spec.delivery.backofDelay"]
    wrong = json.loads(json.dumps(trigger))
    wrong["spec"]["delivery"]["retry"] = "5"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(wrong)
    service = next(o for o in objects if o["kind"] == "Service")
    bad = json.loads(json.dumps(service))
    bad["spec"]["template"]["spec"]["containers"][0]["env"][0]["valu"] = "x"
    assert _unknown_fields(bad, SCHEMAS[(service["apiVersion"], "Service")])


def test_crd_fixtures_name_their_origin() -> None:
    assert len(SCHEMAS) == 6
    for path in CRDS.glob("*.json"):
        source = json.loads(path.read_text(encoding="utf-8"))["source"]
        assert source["repository"] in ("knative/serving", "knative/eventing", "kubernetes-sigs/gateway-api")
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])


# ---- services ----------------------------------------------------------------------------


def test_one_service_per_function(spec: Spec, objects: list[dict[str, Any]]) -> None:
    services = _by_kind(objects, "Service")
    assert set(services) == {knative.service_name(n) for n in spec.functions}
    images = {s["spec"]["template"]["spec"]["containers"][0]["image"] for s in services.values()}
    assert images == {knative.IMAGE}
    in_image: dict[tuple[str, str], str] = {}
    for name, fn in spec.functions.items():
        svc = services[knative.service_name(name)]
        env = _env(svc)
        # What functions-framework is told is what the local platform passes to create_app.
        assert env["FUNCTION_TARGET"] == fn.target
        assert env["FUNCTION_SIGNATURE_TYPE"] == fn.signature
        assert env["FUNCTION_SOURCE"] == f"{knative.APP_DIR}/{fn.source}"
        assert (spec.base_dir / fn.source).exists() or spec.base_dir != REPO_ROOT
        # One image holds every function: no two may be the same source:target.
        key = (env["FUNCTION_SOURCE"], env["FUNCTION_TARGET"])
        assert key not in in_image, f"{name} and {in_image[key]} collide in the image"
        in_image[key] = name
        annotations = svc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == str(fn.scaling.min_scale)
        if fn.trigger.kind == "http" and spec.base_dir == REPO_ROOT:
            assert fn.scaling.min_scale == 1, f"API function {name} should stay warm"
        if fn.trigger.kind in ("event", "schedule"):
            assert annotations["autoscaling.knative.dev/min-scale"] == "0"
        if fn.scaling.concurrency:
            assert svc["spec"]["template"]["spec"]["containerConcurrency"] == fn.scaling.concurrency
        assert 0 < svc["spec"]["template"]["spec"]["timeoutSeconds"] <= knative.MAX_TIMEOUT_S


def test_secrets_are_referenced_never_inlined(objects: list[dict[str, Any]]) -> None:
    from functions import settings

    secret_envs = {settings.DATABASE_URL_ENV, "TROVELESS_S3_ACCESS_KEY_ID", "TROVELESS_S3_SECRET_ACCESS_KEY",
                   "TROVELESS_KEYSTONE_PASSWORD"}
    assert {e for e, _, _ in knative.SECRET_ENV} == secret_envs
    configmap = _by_kind(objects, "ConfigMap")[knative.SETTINGS_CONFIGMAP]
    assert not secret_envs & set(configmap["data"])
    assert not [k for k in configmap["data"] if re.search("PASSWORD|SECRET|TOKEN", k)]
    # Every non-secret setting the ConfigMap sets is one the code reads.
    code = "".join(p.read_text(encoding="utf-8") for p in (REPO_ROOT / "functions").rglob("*.py"))
    assert [k for k in configmap["data"] if k not in code] == []
    for svc in _by_kind(objects, "Service").values():
        container = svc["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"configMapRef": {"name": knative.SETTINGS_CONFIGMAP}},
                                        {"secretRef": {"name": knative.OPENSTACK_SECRET, "optional": True}}]
        env = _env(svc)
        for name in secret_envs:
            assert set(env[name]) == {"secretKeyRef"}, name
        # No silent fallback to a private SQLite file in a pod.
        assert env[settings.DATABASE_URL_ENV]["secretKeyRef"]["optional"] is False


# ---- cross-references --------------------------------------------------------------------


def _service_ref(ref: dict[str, Any], services: dict[str, Any]) -> dict[str, Any]:
    assert ref["apiVersion"] == knative.SERVING and ref["kind"] == "Service"
    assert ref["name"] in services, f"no Service {ref['name']}"
    return services[ref["name"]]


def test_triggers_reach_services_with_consistent_delivery(spec: Spec, objects: list[dict[str, Any]]) -> None:
    services = _by_kind(objects, "Service")
    triggers = _by_kind(objects, "Trigger")
    broker = _by_kind(objects, "Broker")[spec.broker]
    sink_services = {knative.service_name(n) for n in spec.by_kind("sink")}
    assert len(triggers) == len(spec.by_kind("event"))
    deliveries = [(broker["spec"]["delivery"], None)]
    for trig in triggers.values():
        assert trig["spec"]["broker"] == spec.broker
        svc = _service_ref(trig["spec"]["subscriber"]["ref"], services)
        deliveries.append((trig["spec"]["delivery"], svc))
    for delivery, svc in deliveries:
        assert parse_duration(delivery["backoffDelay"]) > 0
        timeout = parse_duration(delivery["timeout"])
        assert delivery["backoffPolicy"] in ("linear", "exponential") and delivery["retry"] >= 0
        dls = delivery.get("deadLetterSink")
        targets = [svc] if svc else []
        if dls:
            assert dls["ref"]["name"] in sink_services
            targets.append(_service_ref(dls["ref"], services))
        for target in targets:
            # Else the broker retries while the first attempt still runs.
            assert timeout < target["spec"]["template"]["spec"]["timeoutSeconds"], target["metadata"]["name"]


def _consumes(triggers: dict[str, Any], event_type: str) -> bool:
    types = [t["spec"]["filter"]["attributes"]["type"] for t in triggers.values()]
    if event_type.endswith("*"):
        return any(t.startswith(event_type[:-1]) for t in types)
    return event_type in types


def test_every_emitted_type_has_a_trigger_and_every_publisher_a_sink(spec: Spec, objects: list[dict[str, Any]]) -> None:
    triggers = _by_kind(objects, "Trigger")
    bindings = _by_kind(objects, "SinkBinding")
    services = _by_kind(objects, "Service")
    for name, fn in spec.functions.items():
        for event_type in fn.emits:
            assert _consumes(triggers, event_type), f"{name} emits {event_type}: no Trigger"
        if fn.emits:
            binding = bindings[knative.service_name(name)]
            assert binding["spec"]["sink"]["ref"] == {"apiVersion": knative.EVENTING, "kind": "Broker",
                                                      "name": spec.broker}
            _service_ref(binding["spec"]["subject"], services)


def test_schedules_are_ping_sources(spec: Spec, objects: list[dict[str, Any]]) -> None:
    pings = _by_kind(objects, "PingSource")
    services = _by_kind(objects, "Service")
    assert set(pings) == {knative.service_name(n) for n in spec.by_kind("schedule")}
    for name, fn in spec.by_kind("schedule").items():
        ping = pings[knative.service_name(name)]
        assert fn.trigger.schedule is not None
        assert ping["spec"]["schedule"] == fn.trigger.schedule.cron
        assert json.loads(ping["spec"]["data"]) == fn.trigger.schedule.data
        assert _service_ref(ping["spec"]["sink"]["ref"], services)["metadata"]["name"] == knative.service_name(name)


def _sample(template: str) -> str:
    return re.sub(r"\{[a-z_][a-z0-9_]*\}", "x1", template)


def _rendered_match(routes: dict[str, Any], method: str, path: str) -> list[str]:
    """The Services the rendered HTTPRoutes send `method path` to."""
    hits = []
    for route in routes.values():
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                if match["method"] != method:
                    continue
                p = match["path"]
                if (p["type"] == "Exact" and p["value"] == path) or (
                    p["type"] == "RegularExpression" and re.fullmatch(p["value"].strip("^$"), path)
                ):
                    hits += [b["name"] for b in rule["backendRefs"]]
    return hits


def test_every_api_route_reaches_its_function(spec: Spec, objects: list[dict[str, Any]]) -> None:
    routes = _by_kind(objects, "HTTPRoute")
    services = _by_kind(objects, "Service")
    for route in routes.values():
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                # RE2 (Envoy and most Gateway implementations): no lookaround, no backreferences.
                assert not re.search(r"\(\?[=!<]|\\[1-9]", match["path"]["value"]), match["path"]["value"]
            for backend in rule["backendRefs"]:
                assert backend["kind"] == "Service" and backend["port"] == 80
                assert backend["name"] in services
    for name, fn in spec.functions.items():
        http = fn.trigger.http or fn.trigger.webhook
        if http is None:
            continue
        method = getattr(http, "method", "POST")
        assert _rendered_match(routes, method, _sample(http.path)) == [knative.service_name(name)], name


def test_names_are_dns_labels_shortened_with_a_hash() -> None:
    long = "provision_" + "very_long_step_name_" * 5
    label = knative.dns_label(long)
    assert len(label) <= 63 and DNS_LABEL.match(label) and label[0].isalpha()
    assert label == knative.dns_label(long)
    assert label != knative.dns_label(long + "x")
    assert knative.dns_label("provision_reserve") == "provision-reserve"


def test_segment_exclusion_is_exact() -> None:
    rx = re.compile(knative._segment_except({"detail", "de", "versions"}))
    for word in ("detail", "de", "versions"):
        assert not rx.fullmatch(word)
    for word in ("d", "det", "details", "detaim", "x", "version", "versionsx", "e", "dz", "1"):
        assert rx.fullmatch(word), word
    assert not rx.fullmatch("a/b")


# ---- the spec drives it ------------------------------------------------------------------


def test_a_function_added_to_the_spec_appears(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO_ROOT / "serverless.yaml").read_text(encoding="utf-8"))
    raw["functions"]["show_widget"] = {
        "source": "functions/api/widgets.py", "target": "show_widget",
        "trigger": {"http": {"method": "GET", "path": "/v1.0/{project_id}/widgets/{widget_id}"}},
        "scaling": {"min_scale": 1, "concurrency": 8},
    }
    raw["functions"]["on_widget_polished"] = {
        "source": "functions/tasks/widgets.py", "target": "on_widget_polished",
        "trigger": {"event": {"type": "troveless.widget.polished", "attributes": {"shop": "north"},
                              "delivery": {"retry": 2, "timeout": "PT90S"}}},
    }
    raw["functions"]["on_widget_hook"] = {
        "source": "functions/webhooks.py", "target": "on_widget_hook",
        "trigger": {"webhook": {"path": "/webhooks/widgets/{secret}", "event_type": "troveless.widget.polished"}},
    }
    copy = tmp_path / "serverless.yaml"
    copy.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "manifests"
    assert cli.main(["render", "knative", "--spec", str(copy), "--out", str(out), "--image", "reg.test/fn:1",
                     "--namespace", "dbaas"]) == 0
    objects = [o for f in sorted(out.glob("*.yaml")) for o in yaml.safe_load_all(f.read_text()) if o]
    services = _by_kind(objects, "Service")
    assert services["show-widget"]["spec"]["template"]["spec"]["containerConcurrency"] == 8
    assert services["show-widget"]["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.test/fn:1"
    assert _rendered_match(_by_kind(objects, "HTTPRoute"), "GET", "/v1.0/p/widgets/w1") == ["show-widget"]
    assert _rendered_match(_by_kind(objects, "HTTPRoute"), "POST", "/webhooks/widgets/s3cr3t") == ["on-widget-hook"]
    assert _rendered_match(_by_kind(objects, "HTTPRoute"), "GET", "/webhooks/widgets/s3cr3t") == []
    assert "on-widget-hook" in _by_kind(objects, "SinkBinding")
    trig = _by_kind(objects, "Trigger")["on-widget-polished"]
    assert trig["metadata"]["namespace"] == "dbaas"
    assert trig["spec"]["filter"]["attributes"] == {"type": "troveless.widget.polished", "shop": "north"}
    assert trig["spec"]["delivery"]["retry"] == 2 and trig["spec"]["delivery"]["timeout"] == "PT90S"
    assert trig["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] == "record-dead-letter"
    assert services["on-widget-polished"]["spec"]["template"]["spec"]["timeoutSeconds"] > 90


def test_render_refuses_a_timeout_above_the_cluster_maximum(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load((REPO_ROOT / "serverless.yaml").read_text(encoding="utf-8"))
    raw["functions"]["selfcheck_ping"]["trigger"]["event"]["delivery"] = {"timeout": "PT10M"}
    copy = tmp_path / "serverless.yaml"
    copy.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert cli.main(["render", "knative", "--spec", str(copy)]) == 1
    assert "selfcheck_ping" in capsys.readouterr().err


def test_stdout_is_one_yaml_stream(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["render", "knative"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert len(docs) == len(knative.render(load_spec()))


def test_containerfiles_match_the_renderer() -> None:
    main = (REPO_ROOT / "Containerfile").read_text(encoding="utf-8")
    guest = (REPO_ROOT / "Containerfile.guest").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", main, re.MULTILINE) and re.search(r"^FROM python:3\.11-slim$", guest, re.MULTILINE)
    assert f"WORKDIR {knative.APP_DIR}" in main
    assert 'ENTRYPOINT ["functions-framework"]' in main
    assert 'ENTRYPOINT ["python", "-m", "guest_agent"]' in guest
    assert knative.IMAGE.rsplit("/", 1)[1].split(":")[0] == "functions"
    assert knative.GUEST_IMAGE.rsplit("/", 1)[1].split(":")[0] == "guest-agent"
    for text in (main, guest):
        for src in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
            assert (REPO_ROOT / src).exists(), src


# ---- agreement with the local platform ---------------------------------------------------


def _candidate_paths(spec: Spec) -> list[str]:
    """Every route template with its parameters filled by a plain value and by the literal
    words other templates have at the same position (where routes can collide)."""
    templates = [fn.trigger.http.path if fn.trigger.http else fn.trigger.webhook.path  # type: ignore[union-attr]
                 for fn in spec.functions.values() if fn.trigger.http or fn.trigger.webhook]
    split = [[s for s in t.strip("/").split("/") if s] for t in templates]
    paths = set()
    for segs in split:
        options = []
        for i, seg in enumerate(segs):
            if re.fullmatch(r"\{[a-z_][a-z0-9_]*\}", seg):
                words = {o[i] for o in split if len(o) == len(segs) and not o[i].startswith("{")}
                options.append(sorted({"x1"} | words))
            else:
                options.append([seg])
        for combo in itertools.product(*options):
            path = "/" + "/".join(combo)
            paths |= {path, path + "/"} if combo else {"/"}
    return sorted(paths)


def test_local_gateway_and_http_routes_agree(spec: Spec, objects: list[dict[str, Any]]) -> None:
    apps = {name: (lambda environ, start_response: []) for name in spec.functions}
    gateway = Gateway(spec, apps)  # type: ignore[arg-type]
    function_of = {id(app): name for name, app in apps.items()}
    routes = _by_kind(objects, "HTTPRoute")
    assert len(routes) == len(gateway.routes)
    methods = {m for m, _, _ in gateway.routes}
    checked = 0
    for path in _candidate_paths(spec):
        for method in methods:
            local = next((function_of[id(app)] for m, rx, app in gateway.routes if m == method and rx.match(path)),
                         None)
            rendered = _rendered_match(routes, method, path)
            expected = [knative.service_name(local)] if local else []
            assert rendered == expected, f"{method} {path}: local {local}, rendered {rendered}"
            checked += 1
    assert checked >= len(routes)


def test_local_broker_and_triggers_agree(spec: Spec, objects: list[dict[str, Any]]) -> None:
    broker = LocalBroker(spec, None, lambda name: name)  # type: ignore[arg-type]
    triggers = _by_kind(objects, "Trigger")
    assert broker.path == f"/{spec.namespace}/{spec.broker}"
    for trig in triggers.values():
        attributes = trig["spec"]["filter"]["attributes"]
        subscriber = trig["spec"]["subscriber"]["ref"]["name"]
        # An event carrying exactly the filter's attributes reaches the same functions locally.
        local = sorted(knative.service_name(n) for n in broker.spec.subscribers(attributes))
        rendered = sorted(t["metadata"]["name"] for t in triggers.values()
                          if all(attributes.get(k) == v for k, v in t["spec"]["filter"]["attributes"].items()))
        assert subscriber in local and local == rendered
        # Delivery as the local broker applies it to this subscriber's rows.
        name = next(n for n in spec.functions if knative.service_name(n) == subscriber)
        local_delivery = spec.delivery_for(name)
        d = trig["spec"]["delivery"]
        assert (d["retry"], d["backoffPolicy"], d["backoffDelay"], d["timeout"]) == (
            local_delivery.retry, local_delivery.backoff_policy, local_delivery.backoff_delay, local_delivery.timeout)
        sink = local_delivery.dead_letter_sink
        assert d.get("deadLetterSink", {}).get("ref", {}).get("name") == (knative.service_name(sink) if sink else None)


def test_local_scheduler_and_ping_sources_agree(spec: Spec, objects: list[dict[str, Any]]) -> None:
    scheduler = Scheduler(spec, lambda name: name)
    try:
        pings = _by_kind(objects, "PingSource")
        assert {knative.service_name(n) for n in scheduler.jobs} == set(pings)
        for name, job in scheduler.jobs.items():
            ping = pings[knative.service_name(name)]
            assert ping["spec"]["schedule"] == job.cron
            assert json.loads(ping["spec"]["data"]) == job.data
            # The local ticks carry the `source` Knative's PingSource gives its events.
            meta = ping["metadata"]
            assert PING_SOURCE_PREFIX + name.replace("_", "-") == \
                f"/apis/v1/namespaces/{meta['namespace']}/pingsources/{meta['name']}"
    finally:
        scheduler._pool.shutdown(wait=False)


def test_rendering_from_the_same_file_the_platform_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TROVELESS_SPEC picks the file for both (load_spec's default)."""
    copy = tmp_path / "serverless.yaml"
    shutil.copy(TEST_SPEC, copy)
    monkeypatch.setenv("TROVELESS_SPEC", str(copy))
    assert {o["metadata"]["name"] for o in knative.render(load_spec()) if o["kind"] == "Service"} == {
        knative.service_name(n) for n in load_spec(TEST_SPEC).functions}


def test_the_deployment_guide_lists_every_setting() -> None:
    guide = (REPO_ROOT / "docs" / "deploy-knative.md").read_text(encoding="utf-8")
    from guest_agent import settings as guest_settings

    names = set()
    for module in ("functions/settings.py", "events/publisher.py", "guest_agent/settings.py"):
        names |= set(re.findall(r"TROVELESS_[A-Z0-9_]*[A-Z0-9]", (REPO_ROOT / module).read_text(encoding="utf-8")))
    names |= {guest_settings._env_name(a.dest.replace("_", "-"))
              for a in guest_settings.build_parser({})._actions if a.dest != "help"}
    names -= {"TROVELESS_GUEST_SOME_NAME", "TROVELESS_GUEST", "TROVELESS_MAX"}  # an example, prefixes
    missing = sorted(n for n in names if f"`{n}`" not in guide)
    assert missing == []
