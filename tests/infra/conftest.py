"""An in-process local platform serving the test spec, on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.local.broker import Chaos
from infra.local.platform import Platform, PlatformConfig
from infra.spec import load_spec
from tests.infra.platform_helpers import TEST_SPEC


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "records"
    monkeypatch.setenv("TESTFNS_RECORD_DIR", str(folder))
    return folder


@pytest.fixture
def start_platform(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_dir: Path
) -> Iterator[Callable[..., Platform]]:
    started: list[Platform] = []
    # Platform.start() exports these for the functions; monkeypatch restores them afterwards.
    for name in ("TROVELESS_DATA_DIR", "TROVELESS_DATABASE_URL", "TROVELESS_BROKER_URL", "K_SINK"):
        monkeypatch.setenv(name, "unset")

    def start(chaos: Chaos = Chaos(), spec_path: Path = TEST_SPEC) -> Platform:
        platform = Platform(
            load_spec(spec_path),
            PlatformConfig(
                data_dir=tmp_path / f"data{len(started)}",
                database_url=database_url,
                port=0,
                ingress_port=0,
                functions_port=0,
                chaos=chaos,
            ),
        )
        platform.start()
        started.append(platform)
        return platform

    yield start
    for platform in started:
        platform.stop()
