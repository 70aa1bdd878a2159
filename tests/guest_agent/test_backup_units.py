"""Fast checks of the backup pieces that need no database server: the streaming pipeline,
verified extraction, the tar filter, the backup slot, event ordering, the runner with a
stand-in tool (a real process writing to stdout), and settings."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from events.envelope import encode_binary
from events.guest import (
    BackupObject,
    BackupRequested,
    GuestBackupFinished,
    GuestBackupProgress,
    GuestHeartbeat,
    GuestStatus,
    StoreOptions,
    control_source,
    instance_key,
)
from events.publisher import InMemoryPublisher
from events.replay import SequenceCounter, format_sequence
from events.signing import sign
from guest_agent import heartbeat
from guest_agent.backup.engine import (
    BackupEngine,
    ChecksumMismatch,
    RestoreError,
    ToolCommand,
    extract_verified,
)
from guest_agent.backup.mariadb import read_to_lsn
from guest_agent.backup.postgresql import extract_tar
from guest_agent.backup.runner import BackupRunner
from guest_agent.backup.storage import s3_settings
from guest_agent.backup.stream import (
    HashingReader,
    compress_stream,
    decompressing_reader,
)
from guest_agent.datastores import REGISTRY
from guest_agent.datastores.base import NotReady
from guest_agent.heartbeat import EventFactory, Heartbeater
from guest_agent.process import Redactor, resolve_db_user
from guest_agent.server import CommandApp
from guest_agent.state import StateStore
from guest_agent.supervisor import Busy, NotPrepared, Snapshot, Supervisor
from objectstore.filesystem import FileStore

from .test_units import SECRET, _settings


def _object(store: FileStore, key: str, data: bytes) -> BackupObject:
    writer = store.writer(key)
    compress_stream(io.BytesIO(data), writer)
    info = writer.commit()
    return BackupObject(backup_id=key, location=f"file://{store.root}/{key}", checksum=info.metadata["sha256"],
                        backup_type="full")


def _opener(obj: BackupObject):  # type: ignore[no-untyped-def]
    path = Path(obj.location.removeprefix("file://"))
    return FileStore(path.parent), path.name


# ------------------------------------------------------------------ pipeline


def test_compressed_stream_round_trips_and_the_hash_covers_the_stored_bytes(tmp_path: Path) -> None:
    data = os.urandom(1 << 20) + b"compressible " * 300_000
    store = FileStore(tmp_path)
    obj = _object(store, "obj", data)
    stored = (tmp_path / "obj").read_bytes()
    assert obj.checksum == hashlib.sha256(stored).hexdigest()
    assert len(stored) < len(data)

    source = HashingReader(store.read("obj"))
    assert decompressing_reader(source).read() == data
    assert source.sha256 == obj.checksum and source.size == len(stored)


def test_reads_are_paced_to_the_maximum_rate(tmp_path: Path) -> None:
    waits: list[float] = []
    writer = FileStore(tmp_path).writer("paced")
    compress_stream(io.BytesIO(b"x" * (3 << 20)), writer, max_rate=1e6, wait=waits.append)
    writer.abort()
    # 3 MiB at 1 MB/s: each 1 MiB chunk may only end 1.05 s after the previous one (the fake
    # wait does not sleep, so each wait is the whole time the stream is ahead of the rate).
    assert len(waits) == 3 and 3.0 < waits[-1] < 3.2 and waits == sorted(waits)


def test_verified_extraction(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = os.urandom(300_000)
    obj = _object(store, "good", data)
    received = io.BytesIO()
    extract_verified(obj, _opener, lambda stream: received.write(stream.read()))
    assert received.getvalue() == data

    # One flipped byte: whatever breaks first (zstd here), it is reported as a mismatch.
    damaged = bytearray((tmp_path / "good").read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    (tmp_path / "damaged").write_bytes(damaged)
    bad = obj.model_copy(update={"location": f"file://{tmp_path}/damaged"})
    with pytest.raises(ChecksumMismatch, match="backup good: checksum mismatch"):
        extract_verified(bad, _opener, lambda stream: stream.read())
    # Intact data but not the expected object.
    with pytest.raises(ChecksumMismatch):
        extract_verified(obj.model_copy(update={"checksum": "0" * 64}), _opener, lambda stream: stream.read())
    # An extractor failing on an intact object is reported as itself.
    def refuse(stream: object) -> None:
        raise ValueError("no space left")

    with pytest.raises(RestoreError, match="cannot extract: no space left"):
        extract_verified(obj, _opener, refuse)
    with pytest.raises(RestoreError, match="object not found"):
        extract_verified(obj.model_copy(update={"location": f"file://{tmp_path}/missing"}), _opener, refuse)


def _tar(*members: tuple[str, bytes | None, bytes]) -> io.BytesIO:
    """(name, type, content) -> a tar stream."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            if kind == tarfile.SYMTYPE:
                info.type, info.linkname = tarfile.SYMTYPE, content.decode()
                tar.addfile(info)
            elif kind == tarfile.DIRTYPE:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def test_tar_extraction_takes_only_files_and_directories_inside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    extract_tar(_tar(("base", tarfile.DIRTYPE, b""), ("base/1", None, b"page"), ("PG_VERSION", None, b"15\n")), target)
    assert (target / "base" / "1").read_bytes() == b"page" and (target / "PG_VERSION").read_text() == "15\n"
    assert (target / "base" / "1").stat().st_mode & 0o777 == 0o600
    assert (target / "base").stat().st_mode & 0o777 == 0o700

    with pytest.raises(tarfile.FilterError):
        extract_tar(_tar(("../escaped", None, b"x")), target)
    assert not (tmp_path / "escaped").exists()
    with pytest.raises(RestoreError, match="only files and directories"):
        extract_tar(_tar(("link", tarfile.SYMTYPE, b"base/1")), target)
    assert not (target / "link").exists()


def test_mariadb_lsn_comes_from_xtrabackup_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "xtrabackup_checkpoints"
    path.write_text("backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44404\nlast_lsn = 50372\n")
    assert read_to_lsn(path) == "44404"
    path.write_text("to_lsn = 12; rm -rf /\n")
    with pytest.raises(Exception, match="no valid to_lsn"):
        read_to_lsn(path)


# ------------------------------------------------------------------ settings


def test_s3_credentials_come_from_the_environment_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TROVELESS_S3_ACCESS_KEY_ID="AKIDEXAMPLE",
                         TROVELESS_S3_SECRET_ACCESS_KEY="wJalr-secret-key", TROVELESS_GUEST_BACKUP_COMPRESS_THREADS="2")
    assert "wJalr-secret-key" not in repr(settings) and "AKIDEXAMPLE" not in repr(settings)
    s3 = s3_settings(StoreOptions(endpoint_url="http://127.0.0.1:9000", region="r1", path_style=True), settings)
    assert (s3.endpoint_url, s3.region, s3.path_style) == ("http://127.0.0.1:9000", "r1", True)
    assert (s3.access_key_id, s3.secret_access_key) == ("AKIDEXAMPLE", "wJalr-secret-key")
    assert settings.backup_compress_threads == 2 and settings.backup_max_rate_mb == 0
    unset = s3_settings(StoreOptions(), _settings(tmp_path))
    assert unset.access_key_id is None and unset.secret_access_key is None  # boto3's own chain


# ------------------------------------------------------------------ slot, events, runner


class _RunningServer:
    """Stands in for the server's Popen: the backup slot only asks whether it runs."""

    pid = 4242

    def poll(self) -> None:
        return None


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[Supervisor, list[Snapshot]]]:
    settings = _settings(tmp_path)
    settings.instance_dir.mkdir(parents=True)
    settings.log_dir.mkdir(parents=True)
    ds = REGISTRY["postgresql"](settings, resolve_db_user("postgresql", None), Redactor())
    store = StateStore(settings.state_file, settings.instance_id, settings.datastore)
    changes: list[Snapshot] = []
    yield Supervisor(settings, ds, store, on_change=changes.append), changes


def test_the_backup_slot(supervisor: tuple[Supervisor, list[Snapshot]]) -> None:
    sup, changes = supervisor
    with pytest.raises(NotPrepared):
        sup.begin_backup("b1")
    sup.store.update(prepared=True)
    with pytest.raises(NotReady, match="not running"):
        sup.begin_backup("b1")
    sup._proc = _RunningServer()  # type: ignore[assignment]
    assert sup.begin_backup("b1") is True
    assert changes[-1].backup_id == "b1" and sup.snapshot().backup_id == "b1"
    assert sup.begin_backup("b1") is False  # the same backup again: no-op
    with pytest.raises(Busy, match="b1"):
        sup.begin_backup("b2")
    for op in ("restart", "stop", "start", "prepare"):
        with pytest.raises(Busy, match="backup 'b1' is in progress"):
            sup._claim(op)
    assert sup._claim("crash-recovery") is True  # healing the server is never blocked
    sup._op = None
    with sup.sql_access():  # SQL commands go on during a backup
        pass
    sup.end_backup("b1")
    assert changes[-1].backup_id is None and sup.snapshot().backup_id is None
    sup._claim("restart")
    with pytest.raises(Busy, match="restart"):
        sup.begin_backup("b3")


def test_guest_events_keep_their_order_and_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat, "EVENT_RETRY_S", 0.01)
    settings = _settings(tmp_path)
    factory = EventFactory(settings, SECRET, lambda: 1)
    published = InMemoryPublisher()
    failures = iter([True, True])

    class Flaky:
        def publish(self, message):  # type: ignore[no-untyped-def]
            published.publish(message)
            if message.type == GuestBackupFinished.TYPE and next(failures, False):
                raise OSError("broker away")

    running = Snapshot(GuestStatus.HEALTHY, "", 1, 0, "15", backup_id="b1")
    done = Snapshot(GuestStatus.HEALTHY, "", 1, 0, "15")
    beats = Heartbeater(factory, Flaky(), lambda: done, interval=60)
    beats.status_changed(running)
    beats.emit(GuestBackupProgress(instance_id="inst-1", backup_id="b1", state="BUILDING"))
    beats.emit(GuestBackupFinished(instance_id="inst-1", backup_id="b1", success=False, error="x"))
    beats.status_changed(done)
    beats.start()
    beats.stop()
    kinds = [(m.type, m.data.get("backup_id")) for m in published.messages]
    assert kinds[0] == (GuestHeartbeat.TYPE, "b1")
    assert kinds[1] == (GuestBackupProgress.TYPE, "b1")
    # Finished: one signed message, sent three times (a retry of a delivered copy is a replay).
    assert kinds[2:5] == [(GuestBackupFinished.TYPE, "b1")] * 3
    assert len({m.id for m in published.messages[2:5]}) == 1
    assert kinds[5] == (GuestHeartbeat.TYPE, None)


class _ShellEngine(BackupEngine):
    """The real runner and pipeline, with `sh` standing in for the backup tool."""

    stream_format = "raw"

    def __init__(self, ds, settings, script: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ds, settings)
        self.script = script

    def backup_command(self, parent: BackupObject | None, workdir: Path) -> ToolCommand:
        return ToolCommand(["/bin/sh", "-c", self.script])

    def backup_lsn(self, workdir: Path) -> str | None:
        return "77"

    def restore(self, chain, open_store, target, cancelled) -> None:  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _run_backup(sup: Supervisor, script: str, location: str) -> list[object]:
    emitted: list[object] = []
    done = threading.Event()

    def emit(event: object) -> None:
        emitted.append(event)
        if isinstance(event, GuestBackupFinished):
            done.set()

    runner = BackupRunner(sup.settings, sup, _ShellEngine(sup.ds, sup.settings, script), emit)
    assert runner.submit(BackupRequested(instance_id="inst-1", backup_id="b1", location=location,
                                         metadata={"note": "n", "backup_id": "forged"}))
    assert done.wait(30)
    runner.shutdown()
    return emitted


def test_runner_stores_the_tool_output_and_reports_it(supervisor: tuple[Supervisor, list[Snapshot]], tmp_path: Path) -> None:
    sup, changes = supervisor
    sup.store.update(prepared=True)
    sup._proc = _RunningServer()  # type: ignore[assignment]
    store = tmp_path / "store"
    emitted = _run_backup(sup, "head -c 3000000 /dev/urandom", f"file://{store}/obj")
    result = emitted[-1]
    assert isinstance(result, GuestBackupFinished) and result.success, result
    assert [type(e).__name__ for e in emitted[:1]] == ["GuestBackupProgress"]
    assert [e.state for e in emitted if isinstance(e, GuestBackupProgress)][-1] == "SAVING"
    assert result.checksum == hashlib.sha256((store / "obj").read_bytes()).hexdigest()
    assert result.object_size == (store / "obj").stat().st_size and result.lsn == "77"
    meta = json.loads((store / "obj.meta.json").read_text())
    assert meta["backup_id"] == "b1" and meta["note"] == "n" and meta["lsn"] == "77"
    assert sup.snapshot().backup_id is None and changes[-1].backup_id is None
    assert not list(sup.settings.instance_dir.glob(".backup-*"))  # the private workdir is gone


def test_runner_failure_leaves_no_object(supervisor: tuple[Supervisor, list[Snapshot]], tmp_path: Path) -> None:
    sup, _ = supervisor
    sup.store.update(prepared=True)
    sup._proc = _RunningServer()  # type: ignore[assignment]
    store = tmp_path / "store"
    emitted = _run_backup(sup, "head -c 2000000 /dev/urandom; echo 'disk on fire' >&2; exit 3", f"file://{store}/obj")
    result = emitted[-1]
    assert isinstance(result, GuestBackupFinished) and not result.success
    assert result.error == "sh exited with code 3: disk on fire"
    assert list(store.iterdir()) == []
    assert sup.snapshot().backup_id is None


def test_backup_command_answers(supervisor: tuple[Supervisor, list[Snapshot]], tmp_path: Path) -> None:
    sup, _ = supervisor
    runner = BackupRunner(sup.settings, sup, _ShellEngine(sup.ds, sup.settings, "sleep 30"), lambda e: None)
    app = CommandApp(sup.settings, SECRET, sup, EventFactory(sup.settings, SECRET), runner)
    client = Client(app)
    counter = SequenceCounter()

    def post(event: BackupRequested):  # type: ignore[no-untyped-def]
        msg = event.to_message(control_source("inst-1"), subject="inst-1",
                               extensions={"partitionkey": "inst-1", "sequence": format_sequence(counter.next())})
        headers, body = encode_binary(sign(msg, instance_key("inst-1", SECRET)))
        return client.post("/commands", data=body, headers=headers)

    request = BackupRequested(instance_id="inst-1", backup_id="b1", location=f"file://{tmp_path}/x")
    assert post(request).status_code == 409  # not prepared
    sup.store.update(prepared=True)
    answer = post(request)
    assert answer.status_code == 503 and answer.json["reason"] == "not_ready"  # type: ignore[index]
    sup._proc = _RunningServer()  # type: ignore[assignment]
    assert post(request).status_code == 202
    assert "already in progress" in post(request).get_data(as_text=True)
    assert post(request.model_copy(update={"backup_id": "b2"})).status_code == 409
    runner.shutdown()  # kills the stand-in tool; the backup is reported failed
    assert sup.snapshot().backup_id is None


def _xbstream(path: str, payload: bytes) -> bytes:
    """One file in mbstream's format: a payload chunk (with its CRC-32) and an end chunk."""
    import struct
    import zlib

    name = path.encode()
    header = b"XBSTCK01" + b"\0" + b"P" + struct.pack("<I", len(name)) + name
    chunk = header + struct.pack("<QQI", len(payload), 0, zlib.crc32(payload)) + payload
    return chunk + b"XBSTCK01" + b"\0" + b"E" + struct.pack("<I", len(name)) + name


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A temp dir the db user can reach (pytest's tmp_path sits below a 0700 directory)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tvga-units-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_mbstream_complaints_fail_the_extraction(traversable_dir: Path) -> None:
    """mbstream refuses `..` paths but exits 0 doing so: what it prints must count."""
    from guest_agent.backup.mariadb import MariaDBBackup, _tool

    tmp_path = traversable_dir
    settings = _settings(tmp_path, "mariadb")
    settings.log_dir.mkdir(parents=True)
    user = resolve_db_user("mariadb", None)
    engine = MariaDBBackup(REGISTRY["mariadb"](settings, user, Redactor()), settings)
    mbstream = _tool(engine.ds.mariadbd, "mbstream")
    assert mbstream is not None, "mbstream is not installed"
    into = tmp_path / "into"
    into.mkdir()
    os.chown(into, user.uid, user.gid)
    store = FileStore(tmp_path / "store")

    good = _object(store, "good", _xbstream("ibdata1", b"pages"))
    engine._extract(mbstream, good, _opener, into, lambda: False)
    assert (into / "ibdata1").read_bytes() == b"pages" and (into / "ibdata1").stat().st_uid == user.uid

    evil = _object(store, "evil", _xbstream("../escaped", b"x"))
    with pytest.raises(RestoreError, match="backup evil: cannot extract: mbstream stopped early: .*invalid filename"):
        engine._extract(mbstream, evil, _opener, into, lambda: False)
    assert not (tmp_path / "escaped").exists()


def test_the_mmap_threshold_can_be_fixed() -> None:
    from guest_agent.memory import fix_mmap_threshold

    assert fix_mmap_threshold() is True  # glibc here: big buffers go back to the kernel when freed
