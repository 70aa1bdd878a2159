"""Fixtures for the live guest agent tests (see helpers.py)."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import DB_PORTS, Agent, Broker, free_loopback


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def make_agent(broker: Broker) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def factory(datastore: str, *, instance_id: str | None = None, start: bool = True, extra: tuple[str, ...] = ()) -> Agent:
        root = Path(tempfile.mkdtemp(prefix="tvga-", dir="/tmp"))
        os.chmod(root, 0o711)
        secret = secrets.token_bytes(32)
        key = root / "key"
        key.write_bytes(secret)
        os.chmod(key, 0o600)
        agent = Agent(
            instance_id=instance_id or f"inst-{secrets.token_hex(4)}",
            datastore=datastore,
            address=free_loopback(DB_PORTS[datastore]),
            root=root,
            secret=secret,
            broker=broker,
        )
        agents.append(agent)
        if start:
            agent.start(*extra)
        return agent

    yield factory
    for agent in agents:
        agent.cleanup()
