"""The administrators' catalog: mgmt datastore versions, flavors, the cross-project
instance list, and the 403 every other caller gets."""

from __future__ import annotations

from typing import Any

from functions.core.models.backup import Backup
from functions.core.models.base import utcnow
from functions.core.models.configuration import (
    Configuration,
    DatastoreConfigurationParameter,
)
from functions.core.models.instance import Instance
from functions.runtime import runtime
from tests.functions.test_instances_api import body

VERSIONS = "/mgmt/datastore-versions"


def _version(**fields: Any) -> dict[str, Any]:
    base = {"name": "16", "version": "16.4", "datastore_name": "postgresql", "datastore_manager": "postgresql",
            "active": True}
    base.update(fields)
    return {"version": base}


def _mgmt_versions(api) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    r = api("GET", VERSIONS, token="admin")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["versions"]


def _find(api, datastore: str, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    [found] = [v for v in _mgmt_versions(api) if v["datastore_name"] == datastore and v["name"] == name]
    return found


def _fault(r, status: int, name: str, text: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, (r.status_code, r.get_json())
    fault = r.get_json()[name]
    assert fault["code"] == status and text in fault["message"], fault


def _instance(api, project: str = "p1", **fields: Any) -> str:  # type: ignore[no-untyped-def]
    r = api("POST", "/instances", project=project, json=body(**fields))
    assert r.status_code == 200, r.get_json()
    return r.get_json()["instance"]["id"]


def _mark_deleted(instance_id: str) -> None:
    with runtime().transaction() as s:
        inst = s.get(Instance, instance_id)
        assert inst is not None
        inst.deleted, inst.deleted_at = True, utcnow()


# ---- who may call ---------------------------------------------------------------------


def test_every_mgmt_catalog_route_is_for_administrators_only(api) -> None:  # type: ignore[no-untyped-def]
    pg = _find(api, "postgresql", "15.19")["id"]
    routes = [
        ("GET", VERSIONS, None),
        ("POST", VERSIONS, _version()),
        ("GET", f"{VERSIONS}/{pg}", None),
        ("PATCH", f"{VERSIONS}/{pg}", {"active": False}),
        ("DELETE", f"{VERSIONS}/{pg}", None),
        ("POST", "/mgmt/flavors", {"flavor": {"name": "x", "ram": 512, "vcpus": 1}}),
        ("PATCH", "/mgmt/flavors/1", {"flavor": {"ram": 128}}),
        ("DELETE", "/mgmt/flavors/1", None),
        ("GET", "/mgmt/instances", None),
        ("GET", "/mgmt/instances?deleted=true&project_id=p2", None),
    ]
    for method, path, payload in routes:
        for project in ("p1", "p2"):
            r = api(method, path, project=project, json=payload) if payload else api(method, path, project=project)
            _fault(r, 403, "forbidden", "administrators only")
        # Refused before the body is read: a malformed body is still a 403, not a 400.
        if payload:
            r = api(method, path, data="{not json", headers={"Content-Type": "application/json"})
            assert r.status_code == 403, (method, path)
    # Nothing changed.
    assert _find(api, "postgresql", "15.19")["active"] is True
    assert not [v for v in _mgmt_versions(api) if v["name"] == "16"]
    assert api("GET", "/flavors/1").get_json()["flavor"]["ram"] == 512
    # An administrator may work in any project's URL (Trove's admin_or_owner); a member may not.
    assert api("GET", VERSIONS, project="p2", token="admin").status_code == 200
    assert api("GET", VERSIONS, project="p2", token="p1").status_code == 403


# ---- datastore versions ---------------------------------------------------------------


def test_create_list_show_a_version_and_the_admin_view(api) -> None:  # type: ignore[no-untyped-def]
    payload = _version(image="/usr/lib/postgresql/16/bin", image_tags=["trove", "pg"], packages=["postgresql-16"],
                       registry_ext="ext", repl_strategy="strategy")
    r = api("POST", VERSIONS, json=payload, token="admin")
    assert r.status_code == 202 and r.get_data() == b""
    created = _find(api, "postgresql", "16")
    pg_id = api("GET", "/datastores/postgresql").get_json()["datastore"]["id"]
    assert created == {
        "id": created["id"], "name": "16", "version": "16.4", "datastore_id": pg_id,
        "datastore_name": "postgresql", "datastore_manager": "postgresql",
        "image": "/usr/lib/postgresql/16/bin", "image_tags": ["trove", "pg"], "packages": ["postgresql-16"],
        "active": True, "registry_ext": "ext", "repl_strategy": "strategy", "default": False,
    }
    r = api("GET", f"{VERSIONS}/{created['id']}", token="admin")
    assert r.status_code == 200 and r.get_json() == {"version": created}
    seeded = _find(api, "postgresql", "15.19")
    assert seeded["default"] is True and seeded["image"] is None and seeded["image_tags"] == []
    # The new version is usable by clients at once.
    shown = api("GET", "/datastores/postgresql/versions/16").get_json()["version"]
    assert shown["id"] == created["id"] and shown["version"] == "16.4"
    # `version` defaults to the name (Trove); a MySQL manager runs on the mariadb driver.
    r = api("POST", VERSIONS, json=_version(name="8.0", version=None, datastore_name="mysql",
                                            datastore_manager="mysql"), token="admin")
    assert r.status_code == 202, r.get_json()
    mysql = _find(api, "mysql", "8.0")
    assert mysql["version"] == "8.0" and mysql["datastore_manager"] == "mariadb" and mysql["image"] is None
    # The datastore was created with it.
    names = [d["name"] for d in api("GET", "/datastores").get_json()["datastores"]]
    assert names == ["mariadb", "mysql", "postgresql"]
    _fault(api("GET", f"{VERSIONS}/nope", token="admin"), 404, "itemNotFound", "'nope' cannot be found")


def test_version_validation_and_duplicates(api) -> None:  # type: ignore[no-untyped-def]
    assert api("POST", VERSIONS, json=_version(), token="admin").status_code == 202
    cases = [
        (_version(), 400, "'16(16.4)' already exists"),
        (_version(datastore_manager="oracle"), 400, "Datastore manager 'oracle' is not supported"),
        ({"version": {"name": "x", "datastore_name": "postgresql", "datastore_manager": "postgresql"}},
         400, "version['active']: Field required"),
        (_version(active="yes"), 400, "version['active']"),
        (_version(name="a/b"), 400, "version['name']"),
        (_version(name="x", image="x" * 256), 400, "version['image']"),
        (_version(name="x", image_tags=["a", "b", "c", "d", "e", "f"]), 400, "version['image_tags']"),
        (_version(name="x", packages=["a,b"]), 400, "version['packages'][0]"),
        (_version(name="x", flavor="big"), 400, "version['flavor']: Extra inputs"),
        (_version(name="x", default=True, active=False), 400, "inactive version cannot be the default"),
        ({"versions": {}}, 400, "'version' is a required property"),
    ]
    for payload, status, text in cases:
        r = api("POST", VERSIONS, json=payload, token="admin")
        _fault(r, status, "badRequest", text)
    _fault(api("POST", VERSIONS, data="[", token="admin"), 400, "badRequest", "Malformed request body")
    # Same name, another version number: a different version (Trove since Wallaby).
    assert api("POST", VERSIONS, json=_version(version="16.5"), token="admin").status_code == 202
    assert sorted(v["version"] for v in _mgmt_versions(api) if v["name"] == "16") == ["16.4", "16.5"]


def test_default_flag_on_create_and_edit(api) -> None:  # type: ignore[no-untyped-def]
    assert api("POST", VERSIONS, json=_version(default=True), token="admin").status_code == 202
    new = _find(api, "postgresql", "16")
    old = _find(api, "postgresql", "15.19")
    assert new["default"] is True and old["default"] is False
    assert api("GET", "/datastores/postgresql").get_json()["datastore"]["default_version"] == new["id"]
    # An instance with no version gets the new default.
    r = api("POST", "/instances", json=body(datastore={"type": "postgresql"}))
    assert r.get_json()["instance"]["datastore"]["version"] == "16"

    path = f"{VERSIONS}/{new['id']}"
    _fault(api("PATCH", path, json={"active": False}, token="admin"), 400, "badRequest", "is the default")
    assert _find(api, "postgresql", "16")["active"] is True  # rolled back
    assert api("PATCH", path, json={"active": False, "default": False}, token="admin").status_code == 202
    shown = api("GET", path, token="admin").get_json()["version"]
    assert shown["active"] is False and shown["default"] is False
    assert "default_version" not in api("GET", "/datastores/postgresql").get_json()["datastore"]
    # Inactive: listed for administrators, hidden from clients, and no default.
    assert [v["name"] for v in api("GET", "/datastores/postgresql/versions").get_json()["versions"]] == ["15.19"]
    _fault(api("PATCH", path, json={"default": True}, token="admin"), 400, "badRequest",
           "inactive version cannot be the default")
    assert api("PATCH", path, json={}, token="admin").status_code == 202  # nothing to change (Trove)
    assert api("GET", path, token="admin").get_json()["version"] == shown
    assert api("PATCH", f"{VERSIONS}/{old['id']}", json={"default": True}, token="admin").status_code == 202
    assert _find(api, "postgresql", "15.19")["default"] is True


def test_edit_a_version(api) -> None:  # type: ignore[no-untyped-def]
    assert api("POST", VERSIONS, json=_version(image="img", image_tags=["a"]), token="admin").status_code == 202
    vid = _find(api, "postgresql", "16")["id"]
    path = f"{VERSIONS}/{vid}"
    # python-troveclient's body: the attributes themselves.
    r = api("PATCH", path, json={"image": "/opt/pg16/bin", "image_tags": ["b", "c"], "packages": ["p1"],
                                 "name": "16-lts", "registry_ext": "r"}, token="admin")
    assert r.status_code == 202 and r.get_data() == b""
    shown = api("GET", path, token="admin").get_json()["version"]
    assert (shown["name"], shown["image"], shown["image_tags"], shown["packages"], shown["registry_ext"]) == (
        "16-lts", "/opt/pg16/bin", ["b", "c"], ["p1"], "r")
    assert shown["version"] == "16.4" and shown["active"] is True  # untouched
    # Wrapped like the create body, and null clears a nullable attribute.
    assert api("PATCH", path, json={"version": {"image": None, "datastore_manager": "postgres"}},
               token="admin").status_code == 202
    shown = api("GET", path, token="admin").get_json()["version"]
    assert shown["image"] is None and shown["datastore_manager"] == "postgresql" and shown["image_tags"] == ["b", "c"]
    assert api("POST", VERSIONS, json=_version(name="17", version="16.4"), token="admin").status_code == 202
    cases = [
        ({"name": "17"}, "'17(16.4)' already exists"),
        ({"name": None}, "name may not be null"),
        ({"active": "false"}, "version['active']"),
        ({"datastore_manager": "db2"}, "Datastore manager 'db2' is not supported"),
        ({"image": 5}, "version['image']"),
        ({"version": "17"}, "version['version']: Extra inputs"),
    ]
    for payload, text in cases:
        _fault(api("PATCH", path, json=payload, token="admin"), 400, "badRequest", text)
    assert api("GET", path, token="admin").get_json()["version"]["name"] == "16-lts"
    _fault(api("PATCH", f"{VERSIONS}/nope", json={"active": False}, token="admin"), 404, "itemNotFound", "nope")


def test_delete_a_version_and_the_refusals_while_in_use(api) -> None:  # type: ignore[no-untyped-def]
    assert api("POST", VERSIONS, json=_version(default=True), token="admin").status_code == 202
    vid = _find(api, "postgresql", "16")["id"]
    path = f"{VERSIONS}/{vid}"
    iid = _instance(api, project="p2", datastore={"type": "postgresql", "version": "16"})
    _fault(api("DELETE", path, token="admin"), 400, "badRequest", "in use by 1 instance")
    # The manager of a version in use does not change under its instances.
    _fault(api("PATCH", path, json={"datastore_manager": "mariadb"}, token="admin"), 400, "badRequest",
           "in use by 1 instance")
    _mark_deleted(iid)
    # A deleted instance still names its version: deactivate, not delete.
    _fault(api("DELETE", path, token="admin"), 400, "badRequest", "deactivate it instead")

    assert api("POST", VERSIONS, json=_version(name="17", version="17.0", default=True), token="admin").status_code == 202
    v17 = _find(api, "postgresql", "17")["id"]
    with runtime().transaction() as s:
        s.add(Backup(name="b", tenant_id="p1", state="COMPLETED", datastore_version_id=v17))
    _fault(api("DELETE", f"{VERSIONS}/{v17}", token="admin"), 400, "badRequest", "in use by 1 backup")
    with runtime().transaction() as s:
        for b in s.query(Backup).filter(Backup.datastore_version_id == v17):
            b.deleted = True
        s.add(Configuration(name="c", tenant_id="p1", datastore_version_id=v17))
        s.add(DatastoreConfigurationParameter(name="work_mem", datastore_version_id=v17, data_type="integer"))
    _fault(api("DELETE", f"{VERSIONS}/{v17}", token="admin"), 400, "badRequest", "in use by 1 configuration")
    with runtime().transaction() as s:
        s.query(Configuration).filter(Configuration.datastore_version_id == v17).delete()

    # Unused: gone, with its parameter catalog, and its datastore loses its default.
    r = api("DELETE", f"{VERSIONS}/{v17}", token="admin")
    assert r.status_code == 202, r.get_json()
    _fault(api("GET", f"{VERSIONS}/{v17}", token="admin"), 404, "itemNotFound", v17)
    assert [v["name"] for v in _mgmt_versions(api) if v["datastore_name"] == "postgresql"] == ["15.19", "16"]
    assert "default_version" not in api("GET", "/datastores/postgresql").get_json()["datastore"]
    with runtime().sessions() as s:
        assert s.query(DatastoreConfigurationParameter).filter_by(datastore_version_id=v17).count() == 0
    _fault(api("DELETE", f"{VERSIONS}/{v17}", token="admin"), 404, "itemNotFound", v17)


# ---- flavors --------------------------------------------------------------------------


def test_create_edit_delete_a_flavor(api) -> None:  # type: ignore[no-untyped-def]
    r = api("POST", "/mgmt/flavors", json={"flavor": {"id": "m1.xl", "name": "m1.xl", "ram": 8192, "vcpus": 4,
                                                       "disk": 20}}, token="admin")
    assert r.status_code == 200, r.get_json()
    created = r.get_json()["flavor"]
    shown = api("GET", "/flavors/m1.xl").get_json()["flavor"]
    assert created == shown
    assert (shown["id"], shown["str_id"], shown["ram"], shown["vcpus"], shown["disk"], shown["ephemeral"]) == (
        None, "m1.xl", 8192, 4, 20, 0)
    # python-troveclient's body: flavor_id "auto", vcpu, and keys we ignore; the next integer id.
    r = api("POST", "/mgmt/flavors", json={"flavor": {"flavor_id": "auto", "name": "d1.huge", "ram": "16384",
                                                       "disk": 0, "vcpu": 8, "ephemeral": 0, "swap": 0,
                                                       "rxtx_factor": "1.0", "is_public": "True"}}, token="admin")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["flavor"]["id"] == 5 and r.get_json()["flavor"]["ram"] == 16384
    listed = [f["str_id"] for f in api("GET", "/flavors").get_json()["flavors"]]
    assert listed == ["1", "2", "3", "4", "m1.xl", "5"]  # by RAM

    r = api("PATCH", "/mgmt/flavors/5", json={"flavor": {"name": "d1.xxl", "ram": 32768}}, token="admin")
    assert r.status_code == 202 and r.get_json()["flavor"]["name"] == "d1.xxl"
    shown = api("GET", "/flavors/5").get_json()["flavor"]
    assert (shown["name"], shown["ram"], shown["vcpus"]) == ("d1.xxl", 32768, 8)

    assert api("DELETE", "/mgmt/flavors/5", token="admin").status_code == 202
    _fault(api("GET", "/flavors/5"), 404, "itemNotFound", "Flavor 5")
    assert "5" not in [f["str_id"] for f in api("GET", "/flavors").get_json()["flavors"]]
    _fault(api("DELETE", "/mgmt/flavors/5", token="admin"), 404, "itemNotFound", "Flavor 5")
    _fault(api("PATCH", "/mgmt/flavors/5", json={"flavor": {"ram": 64}}, token="admin"), 404, "itemNotFound", "5")
    # A deleted flavor's id and name may be taken again.
    r = api("POST", "/mgmt/flavors", json={"flavor": {"id": 5, "name": "d1.xxl", "ram": 64, "vcpus": 1}},
            token="admin")
    assert r.status_code == 200, r.get_json()
    assert api("GET", "/flavors/5").get_json()["flavor"]["ram"] == 64


def test_flavor_validation_and_duplicates(api) -> None:  # type: ignore[no-untyped-def]
    def create(**fields: Any):  # type: ignore[no-untyped-def]
        return api("POST", "/mgmt/flavors", json={"flavor": {"name": "f", "ram": 512, "vcpus": 1, **fields}},
                   token="admin")

    _fault(create(id="1"), 409, "conflict", "Flavor with id '1' already exists")
    _fault(create(name="d1.tiny"), 409, "conflict", "name 'd1.tiny' already exists")
    cases = [
        ({"ram": 32}, "flavor['ram']: Input should be greater than or equal to 64"),
        ({"ram": "lots"}, "flavor['ram']"),
        ({"vcpus": 0}, "flavor['vcpus']"),
        ({"vcpus": True}, "flavor['vcpus']: Value error, must be an integer, not a boolean"),
        ({"disk": -1}, "flavor['disk']"),
        ({"ram": 2**40}, "flavor['ram']: Input should be less than or equal to"),
        ({"id": "has space"}, "flavor['id']"),
        ({"id": "x" * 37}, "flavor['id']"),
        ({"name": ""}, "flavor['name']"),
        ({"name": "x" * 256}, "flavor['name']"),
        ({"colour": "red"}, "flavor['colour']: Extra inputs"),
    ]
    for fields, text in cases:
        _fault(create(**fields), 400, "badRequest", text)
    r = api("POST", "/mgmt/flavors", json={"flavor": {"name": "f", "vcpus": 1}}, token="admin")
    _fault(r, 400, "badRequest", "flavor['ram']: Field required")
    _fault(api("POST", "/mgmt/flavors", json={"name": "f"}, token="admin"), 400, "badRequest", "'flavor'")
    for payload, text in [
        ({"flavor": {}}, "at least one of"),
        ({"flavor": {"ram": None}}, "ram may not be null"),
        ({"flavor": {"vcpus": -1}}, "flavor['vcpus']"),
        ({"flavor": {"id": "9"}}, "flavor['id']: Extra inputs"),
    ]:
        _fault(api("PATCH", "/mgmt/flavors/2", json=payload, token="admin"), 400, "badRequest", text)
    _fault(api("PATCH", "/mgmt/flavors/2", json={"flavor": {"name": "d1.tiny"}}, token="admin"), 409, "conflict",
           "name 'd1.tiny' already exists")
    assert api("GET", "/flavors/2").get_json()["flavor"]["name"] == "d1.small"


def test_a_flavor_in_use_keeps_its_size_and_cannot_be_deleted(api) -> None:  # type: ignore[no-untyped-def]
    r = api("POST", "/mgmt/flavors", json={"flavor": {"id": "9", "name": "pg.s", "ram": 256, "vcpus": 1}},
            token="admin")
    assert r.status_code == 200
    iid = _instance(api, project="p2", flavorRef="9")
    _fault(api("DELETE", "/mgmt/flavors/9", token="admin"), 409, "conflict", "in use by 1 instance(s)")
    _fault(api("PATCH", "/mgmt/flavors/9", json={"flavor": {"ram": 512, "vcpus": 1}}, token="admin"), 409,
           "conflict", "its ram cannot change")
    # Renaming is fine, and so is "changing" a size to the value it has.
    r = api("PATCH", "/mgmt/flavors/9", json={"flavor": {"name": "pg.small", "vcpus": 1}}, token="admin")
    assert r.status_code == 202 and r.get_json()["flavor"]["name"] == "pg.small"
    assert api("GET", "/flavors/9").get_json()["flavor"]["ram"] == 256
    _mark_deleted(iid)
    assert api("DELETE", "/mgmt/flavors/9", token="admin").status_code == 202
    _fault(api("GET", "/flavors/9"), 404, "itemNotFound", "Flavor 9")
    _fault(api("POST", "/instances", json=body(flavorRef="9")), 404, "itemNotFound", "Flavor 9")


# ---- every project's instances --------------------------------------------------------


def test_mgmt_instance_list_across_projects(api) -> None:  # type: ignore[no-untyped-def]
    p1 = {_instance(api, name=f"a{n}") for n in range(3)}
    p2 = {_instance(api, project="p2", name=f"b{n}") for n in range(2)}
    gone = _instance(api, project="p2", name="gone")
    _mark_deleted(gone)

    r = api("GET", "/mgmt/instances", token="admin")
    assert r.status_code == 200
    listed = r.get_json()
    assert {i["id"] for i in listed["instances"]} == p1 | p2 | {gone} and "links" not in listed
    by_id = {i["id"]: i for i in listed["instances"]}
    one = by_id[next(iter(p2))]
    assert one["tenant_id"] == "p2" and one["deleted"] is False and one["deleted_at"] is None
    assert one["status"] == "BUILD" and one["service_status"] == "NEW"
    assert one["task_description"] == "The instance is building."
    assert {"server_id", "volume_id", "created", "updated", "flavor", "datastore"} <= set(one)
    assert one["links"][0]["href"].endswith(f"/v1.0/p2/instances/{one['id']}")  # the owner's URL
    assert by_id[gone]["deleted"] is True and by_id[gone]["deleted_at"]

    # Paging: keyset on id, as the project's own list, with a next link while more remain.
    seen: list[str] = []
    url = "/mgmt/instances?limit=2"
    while True:
        page = api("GET", url, token="admin").get_json()
        assert len(page["instances"]) <= 2
        seen += [i["id"] for i in page["instances"]]
        if "links" not in page:
            break
        [link] = page["links"]
        assert link["rel"] == "next" and "limit=2" in link["href"]
        url = "/mgmt/instances?" + link["href"].split("?", 1)[1]
    assert len(seen) == 6 and set(seen) == p1 | p2 | {gone}

    def ids(query: str) -> set[str]:
        r = api("GET", f"/mgmt/instances?{query}", token="admin")
        assert r.status_code == 200, r.get_json()
        return {i["id"] for i in r.get_json()["instances"]}

    assert ids("project_id=p2") == p2 | {gone}
    assert ids("project_id=p2&deleted=false") == p2
    assert ids("deleted=true") == {gone}
    assert ids("deleted=False") == p1 | p2
    assert ids("project_id=p3") == set()
    _fault(api("GET", "/mgmt/instances?deleted=maybe", token="admin"), 400, "badRequest", "'deleted'")
    _fault(api("GET", "/mgmt/instances?limit=0", token="admin"), 400, "badRequest", "limit")
    # A member sees only their own project's instances in the normal list.
    assert {i["id"] for i in api("GET", "/instances", project="p2").get_json()["instances"]} == p2
