"""The instance and catalog API without running guests: validation, shapes, paging,
tenant isolation, and the workflows each verb starts."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from functions.core.models.platform import OutboxEvent, WorkflowRun
from functions.drivers.binaries import InstalledServer
from functions.runtime import runtime

INSTALLED = [
    InstalledServer("postgresql", "postgresql", "15.19", "/usr/lib/postgresql/15/bin/postgres"),
    InstalledServer("mariadb", "mariadb", "10.11.19", "/usr/sbin/mariadbd"),
]


def body(**fields):  # type: ignore[no-untyped-def]
    base = {"name": "pg1", "flavorRef": 1, "volume": {"size": 1, "type": None},
            "datastore": {"type": "postgresql", "version": "15.19"}, "nics": [{"network_id": "x"}],
            "access": {"is_public": False}}
    base.update(fields)
    return {"instance": base}


def test_catalog_views(api) -> None:  # type: ignore[no-untyped-def]
    stores = api("GET", "/datastores").get_json()["datastores"]
    assert [d["name"] for d in stores] == ["mariadb", "postgresql"]
    pg = stores[1]
    assert pg["default_version"] == pg["versions"][0]["id"] and pg["versions"][0]["name"] == "15.19"
    assert api("GET", "/datastores/mysql").get_json()["datastore"]["name"] == "mariadb"
    versions = api("GET", "/datastores/postgresql/versions").get_json()["versions"]
    assert versions[0]["version"] == "15.19" and versions[0]["datastore"] == pg["id"]
    by_id = api("GET", f"/datastores/versions/{versions[0]['id']}").get_json()["version"]
    assert by_id["name"] == "15.19"
    assert api("GET", "/datastores/postgresql/versions/15.19").status_code == 200
    assert api("GET", "/datastores/oracle").status_code == 404
    flavors = api("GET", "/flavors").get_json()["flavors"]
    assert [(f["id"], f["ram"]) for f in flavors] == [(1, 512), (2, 1024), (3, 2048), (4, 4096)]
    assert api("GET", "/limits").get_json()["limits"][0] == {
        "verb": "ABSOLUTE", "max_instances": 10, "max_ram": -1, "max_volumes": 40, "max_backups": 50}


@pytest.mark.parametrize(
    "payload, status, fault, text",
    [
        ({}, 400, "badRequest", "'instance' is a required property"),
        ({"instance": {}}, 400, "badRequest", "instance['name']"),
        (body(flavorRef=None), 400, "badRequest", "instance['flavorRef']"),
        (body(volume={"size": 0}), 400, "badRequest", "instance['volume']['size']"),
        (body(volume=None), 400, "badRequest", "Volume size must be specified"),
        (body(volume={"size": 11}), 413, "overLimit", "cannot exceed maximum of 10 GB"),
        (body(flavorRef=99), 404, "itemNotFound", "Flavor 99"),
        (body(datastore={"type": "oracle"}), 404, "itemNotFound", "Datastore 'oracle'"),
        (body(datastore={"type": "postgresql", "version": "9.6"}), 404, "itemNotFound", "version '9.6'"),
        (body(restorePoint={"backupRef": "b1"}), 404, "itemNotFound", "Backup b1 could not be found"),
        (body(databases=[{"name": "postgres"}]), 400, "badRequest", "reserved"),
        (body(databases=[{"name": "a"}, {"name": "a"}]), 400, "badRequest", "more than once"),
        (body(users=[{"name": "u", "password": "p", "databases": [{"name": "nope"}]}]), 400, "badRequest", "not being created"),
    ],
)
def test_create_validation(api, payload, status, fault, text) -> None:  # type: ignore[no-untyped-def]
    r = api("POST", "/instances", json=payload)
    assert r.status_code == status, r.get_json()
    assert text in r.get_json()[fault]["message"]
    with runtime().sessions() as s:
        assert s.execute(select(WorkflowRun)).first() is None  # nothing started


def test_create_show_list_rename_delete(api) -> None:  # type: ignore[no-untyped-def]
    r = api("POST", "/instances", json=body(databases=[{"name": "app"}],
                                           users=[{"name": "alice", "password": "secret", "databases": [{"name": "app"}]}]))
    assert r.status_code == 200
    inst = r.get_json()["instance"]
    assert inst["status"] == "BUILD" and inst["operating_status"] == ""
    assert inst["datastore"] == {"type": "postgresql", "version": "15.19", "version_number": "15.19"}
    assert inst["volume"] == {"size": 1} and inst["flavor"]["id"] == "1"
    assert inst["created"] and "." not in inst["created"] and not inst["created"].endswith("Z")
    with runtime().sessions() as s:
        run = s.execute(select(WorkflowRun)).scalar_one()
        assert (run.workflow, run.step, run.resource_id) == ("provision", "reserve", inst["id"])
        assert run.context["users"][0]["password"] == "secret"  # until the guest has it
        assert s.execute(select(OutboxEvent)).first() is not None  # the first step's event waits to be sent

    shown = api("GET", f"/instances/{inst['id']}").get_json()["instance"]
    assert shown["id"] == inst["id"] and shown["status"] == "BUILD"
    assert api("GET", f"/instances/{inst['id']}", token="p2").status_code == 403  # p2's token, p1's URL
    assert api("GET", f"/instances/{inst['id']}", project="p2").status_code == 404  # p2 cannot see p1's
    assert api("DELETE", f"/instances/{inst['id']}", project="p2").status_code == 404

    assert api("PUT", f"/instances/{inst['id']}", json={"instance": {"name": "renamed"}}).status_code == 202
    assert api("GET", f"/instances/{inst['id']}").get_json()["instance"]["name"] == "renamed"
    # Attaching a configuration group needs a running server (the instance is still building).
    r = api("PATCH", f"/instances/{inst['id']}", json={"instance": {"configuration": "c1"}})
    assert r.status_code == 422 and "is not ready" in r.get_json()["unprocessableEntity"]["message"]
    r = api("PUT", f"/instances/{inst['id']}", json={"instance": {"configuration": "c1", "datastore_version": "x"}})
    assert r.status_code == 400
    r = api("POST", f"/instances/{inst['id']}/action", json={"restart": {}})
    assert r.status_code == 422 and "is not ready" in r.get_json()["unprocessableEntity"]["message"]
    assert api("POST", f"/instances/{inst['id']}/action", json={"explode": {}}).status_code == 400

    assert api("DELETE", f"/instances/{inst['id']}").status_code == 202
    assert api("DELETE", f"/instances/{inst['id']}").status_code == 202  # already deleting: no second teardown
    with runtime().sessions() as s:
        runs = s.execute(select(WorkflowRun.workflow).order_by(WorkflowRun.created_at)).scalars().all()
        assert runs == ["provision", "teardown"]


def test_paging_and_isolation(api) -> None:  # type: ignore[no-untyped-def]
    # More than a page (20) of instances: above the default quota of 10, so an admin raises it.
    r = api("PUT", "/mgmt/quotas/p1", json={"quotas": {"instances": 30}}, token="admin")
    assert r.status_code == 200, r.get_json()
    ids = {api("POST", "/instances", json=body(name=f"i{n}")).get_json()["instance"]["id"] for n in range(23)}
    api("POST", "/instances", project="p2", json=body(name="other"))
    first = api("GET", "/instances").get_json()
    assert len(first["instances"]) == 20
    [link] = first["links"]
    assert link["rel"] == "next" and "marker=" in link["href"]
    marker = link["href"].split("marker=")[1]
    second = api("GET", f"/instances?marker={marker}").get_json()
    assert len(second["instances"]) == 3 and "links" not in second
    seen = {i["id"] for i in first["instances"] + second["instances"]}
    assert seen == ids
    assert len(api("GET", "/instances?limit=5").get_json()["instances"]) == 5
    assert len(api("GET", "/instances?limit=500").get_json()["instances"]) == 20
    assert api("GET", "/instances?limit=x").status_code == 400
    detail = api("GET", "/instances/detail?limit=2").get_json()["instances"]
    assert len(detail) == 2 and "created" in detail[0]
    assert [i["name"] for i in api("GET", "/instances", project="p2").get_json()["instances"]] == ["other"]
