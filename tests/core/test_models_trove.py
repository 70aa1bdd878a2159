"""Trove's tables round-trip on SQLite and PostgreSQL, and their unique constraints hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from functions.core.models.backup import Backup, BackupStrategy
from functions.core.models.configuration import (
    Configuration,
    ConfigurationParameter,
    DatastoreConfigurationParameter,
)
from functions.core.models.datastore import Datastore, DatastoreVersion, Flavor
from functions.core.models.instance import Instance, InstanceFault, ServiceStatus
from functions.core.models.quota import Quota, QuotaUsage, Reservation

TENANT = "9a5f0b2c4d6e48f1a3b5c7d9e1f3a5b7"
DS_ID = "5c1e3f0a-0000-4000-8000-000000000001"
DSV_ID = "5c1e3f0a-0000-4000-8000-000000000002"
CFG_ID = "5c1e3f0a-0000-4000-8000-000000000003"
INST_ID = "5c1e3f0a-0000-4000-8000-000000000004"
REPLICA_ID = "5c1e3f0a-0000-4000-8000-000000000005"
FULL_ID = "5c1e3f0a-0000-4000-8000-000000000006"
INCR_ID = "5c1e3f0a-0000-4000-8000-000000000007"
USAGE_ID = "5c1e3f0a-0000-4000-8000-000000000008"
BACKUP_TS = dt.datetime(2026, 3, 1, 12, 30, 45, 123456)
ACCESS = {"is_public": True, "allowed_cidrs": ["202.78.240.0/24"]}
ADDRESSES = [{"address": "10.0.0.12", "type": "private", "network": "net-a"}]
SWIFT = "http://swift/v1/AUTH_9a5f"


def _seed(factory: sessionmaker[Session]) -> None:
    # No relationship()s, so the flush order follows add order: flush parents first.
    with factory() as s, s.begin():
        s.add(Datastore(id=DS_ID, name="mysql"))
        s.flush()
        s.add(
            DatastoreVersion(
                id=DSV_ID, datastore_id=DS_ID, name="8.0", version="8.0.36", manager="mysql",
                image_id="0b0f3e5a-1111-4000-8000-00000000abcd", image_tags="trove,mysql",
                packages="", active=True, registry_ext="trove.guestagent.mysql",
                repl_strategy="mysql_gtid.MysqlGTIDReplication",
            )
        )
        s.flush()
        s.add(Flavor(id="d2", name="ds1G", ram=1024, vcpus=1, disk=10))
        s.add(Configuration(id=CFG_ID, name="group1", description="tuned",
                            tenant_id=TENANT, datastore_version_id=DSV_ID))
        s.flush()
        s.add(DatastoreConfigurationParameter(
            name="max_connections", datastore_version_id=DSV_ID, restart_required=False,
            min_size="1", max_size="100000", data_type="integer"))
        s.add(DatastoreConfigurationParameter(
            name="innodb_buffer_pool_size", datastore_version_id=DSV_ID, restart_required=True,
            min_size="0", data_type="integer"))
        s.add(ConfigurationParameter(configuration_id=CFG_ID, configuration_key="max_connections",
                                     configuration_value="555"))
        s.add(ConfigurationParameter(configuration_id=CFG_ID,
                                     configuration_key="innodb_buffer_pool_size",
                                     configuration_value="134217728"))
        s.flush()
        s.get_one(Datastore, DS_ID).default_version_id = DSV_ID
        s.add(Instance(
            id=INST_ID, name="db1", hostname="db1.local", compute_instance_id="vm-0001",
            task_id=0x05, task_description="The instance is building.",
            task_start_time=BACKUP_TS, volume_id="vol-0001", flavor_id="d2", volume_size=2,
            volume_type="lvmdriver-1", tenant_id=TENANT, server_status="BUILD",
            datastore_version_id=DSV_ID, configuration_id=CFG_ID, region_id="RegionOne",
            encrypted_key="c2VjcmV0LWtleQ==", access=ACCESS, addresses=ADDRESSES,
            guest_endpoint="http://127.0.0.1:8801", ssl_mode="disabled",
        ))
        s.flush()
        s.add(Instance(id=REPLICA_ID, name="db1-1", tenant_id=TENANT, datastore_version_id=DSV_ID,
                       flavor_id="d2", volume_size=2, slave_of_id=INST_ID, type="replica"))
        s.add(ServiceStatus(instance_id=INST_ID, status_id=0x21, status_description="healthy",
                            last_sequence=42, heartbeat_at=BACKUP_TS))
        s.add(InstanceFault(instance_id=INST_ID, message="Build error: Port.",
                            details="Traceback (most recent call last):\n  ..."))
        s.add(Backup(
            id=FULL_ID, name="full", description="nightly",
            location=f"{SWIFT}/database_backups/{FULL_ID}.xbstream.gz", backup_type="full",
            size=0.12, tenant_id=TENANT, state="COMPLETED", instance_id=INST_ID,
            checksum="d41d8cd98f00b204e9800998ecf8427e", backup_timestamp=BACKUP_TS,
            datastore_version_id=DSV_ID, bytes_done=5_000_000_000, last_sequence=7,
        ))
        s.flush()
        s.add(Backup(id=INCR_ID, name="incr", backup_type="incremental", tenant_id=TENANT,
                     instance_id=INST_ID, parent_id=FULL_ID, datastore_version_id=DSV_ID))
        s.add(BackupStrategy(tenant_id=TENANT, swift_container="my_backups"))
        s.add(Quota(tenant_id=TENANT, resource="instances", hard_limit=15))
        s.add(QuotaUsage(id=USAGE_ID, tenant_id=TENANT, resource="instances", in_use=1))
        s.flush()
        s.add(Reservation(usage_id=USAGE_ID, delta=1, status="Committed"))


def test_every_model_round_trips(session_factory: sessionmaker[Session]) -> None:
    _seed(session_factory)
    with session_factory() as s, s.begin():
        ds = s.get_one(Datastore, DS_ID)
        assert (ds.name, ds.default_version_id) == ("mysql", DSV_ID)
        dsv = s.get_one(DatastoreVersion, DSV_ID)
        assert (dsv.datastore_id, dsv.name, dsv.version) == (DS_ID, "8.0", "8.0.36")
        assert dsv.manager == "mysql" and dsv.repl_strategy == "mysql_gtid.MysqlGTIDReplication"
        assert dsv.image_tags == "trove,mysql" and dsv.active is True
        fl = s.get_one(Flavor, "d2")
        assert (fl.ram, fl.vcpus, fl.disk, fl.ephemeral) == (1024, 1, 10, 0)
        assert fl.is_public is True and fl.deleted is False

        inst = s.get_one(Instance, INST_ID)
        assert (inst.name, inst.task_id, inst.server_status) == ("db1", 5, "BUILD")
        assert (inst.flavor_id, inst.volume_size, inst.volume_type) == ("d2", 2, "lvmdriver-1")
        assert (inst.datastore_version_id, inst.configuration_id) == (DSV_ID, CFG_ID)
        assert inst.access == ACCESS and inst.addresses == ADDRESSES
        assert inst.guest_endpoint == "http://127.0.0.1:8801"
        assert inst.task_start_time == BACKUP_TS
        assert inst.deleted is False and inst.deleted_at is None and inst.version_id == 1
        assert inst.created.tzinfo is None and inst.updated >= inst.created
        replica = s.get_one(Instance, REPLICA_ID)
        assert replica.slave_of_id == INST_ID and replica.task_id == 1
        assert replica.access is None and replica.addresses is None

        status = s.query(ServiceStatus).filter_by(instance_id=INST_ID).one()
        assert (status.status_id, status.status_description) == (0x21, "healthy")
        assert status.last_sequence == 42
        assert status.heartbeat_at == BACKUP_TS and status.updated_at.tzinfo is None
        fault = s.query(InstanceFault).filter_by(instance_id=INST_ID).one()
        assert fault.message == "Build error: Port."
        assert fault.details is not None and fault.details.startswith("Traceback")

        full = s.get_one(Backup, FULL_ID)
        assert (full.state, full.size, full.backup_type) == ("COMPLETED", 0.12, "full")
        assert full.parent_id is None and full.checksum == "d41d8cd98f00b204e9800998ecf8427e"
        assert full.bytes_done == 5_000_000_000 and full.last_sequence == 7
        assert full.backup_timestamp == BACKUP_TS
        assert full.location == f"{SWIFT}/database_backups/{FULL_ID}.xbstream.gz"
        incr = s.get_one(Backup, INCR_ID)
        assert (incr.parent_id, incr.state, incr.bytes_done) == (FULL_ID, "NEW", 0)
        assert incr.deleted is False and incr.last_sequence == 0
        strategy = s.query(BackupStrategy).filter_by(tenant_id=TENANT).one()
        assert (strategy.instance_id, strategy.backend) == ("", "swift")
        assert strategy.swift_container == "my_backups"

        cfg = s.get_one(Configuration, CFG_ID)
        assert (cfg.name, cfg.tenant_id, cfg.datastore_version_id) == ("group1", TENANT, DSV_ID)
        assert cfg.deleted is False
        values = {p.configuration_key: p.configuration_value
                  for p in s.query(ConfigurationParameter).filter_by(configuration_id=CFG_ID)}
        assert values == {"max_connections": "555", "innodb_buffer_pool_size": "134217728"}
        rule = s.query(DatastoreConfigurationParameter).filter_by(name="max_connections").one()
        assert (rule.data_type, rule.min_size, rule.max_size) == ("integer", "1", "100000")
        assert rule.restart_required is False
        restart = s.query(DatastoreConfigurationParameter).filter_by(restart_required=True).one()
        assert restart.name == "innodb_buffer_pool_size" and restart.max_size is None

        quota = s.query(Quota).filter_by(tenant_id=TENANT).one()
        assert (quota.resource, quota.hard_limit) == ("instances", 15)
        usage = s.get_one(QuotaUsage, USAGE_ID)
        assert (usage.resource, usage.in_use, usage.reserved) == ("instances", 1, 0)
        res = s.query(Reservation).filter_by(usage_id=USAGE_ID).one()
        assert (res.delta, res.status) == (1, "Committed")


def test_instance_version_id_detects_concurrent_writes(
    session_factory: sessionmaker[Session],
) -> None:
    _seed(session_factory)
    with session_factory() as s, s.begin():
        stale_row = s.get_one(Instance, INST_ID)  # detached afterwards, still at version 1
    with session_factory() as s, s.begin():
        s.get_one(Instance, INST_ID).task_id = 1
    with pytest.raises(StaleDataError):
        with session_factory() as s, s.begin():
            s.add(stale_row)
            stale_row.task_id = 0x51
    with session_factory() as s, s.begin():
        row = s.get_one(Instance, INST_ID)
        assert (row.task_id, row.version_id) == (1, 2)


DUPLICATES: dict[str, Callable[[], Any]] = {
    "datastore name": lambda: Datastore(name="mysql"),
    "datastore version": lambda: DatastoreVersion(
        datastore_id=DS_ID, name="8.0", version="8.0.36", manager="mysql"),
    "flavor name": lambda: Flavor(id="d3", name="ds1G", ram=2048, vcpus=2, disk=20),
    "service status per instance": lambda: ServiceStatus(
        instance_id=INST_ID, status_id=0x17, status_description="new"),
    "configuration key": lambda: ConfigurationParameter(
        configuration_id=CFG_ID, configuration_key="max_connections", configuration_value="1"),
    "datastore parameter": lambda: DatastoreConfigurationParameter(
        name="max_connections", datastore_version_id=DSV_ID, data_type="string"),
    "quota": lambda: Quota(tenant_id=TENANT, resource="instances", hard_limit=1),
    "quota usage": lambda: QuotaUsage(tenant_id=TENANT, resource="instances"),
    "backup strategy": lambda: BackupStrategy(tenant_id=TENANT, swift_container="other"),
}


@pytest.mark.parametrize("make", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_unique_constraints_reject_duplicates(
    session_factory: sessionmaker[Session], make: Callable[[], Any]
) -> None:
    _seed(session_factory)
    with pytest.raises(IntegrityError):
        with session_factory() as s, s.begin():
            s.add(make())
