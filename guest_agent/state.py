"""`DIR/agent.json`: what the agent must remember across its own restarts (mode 0600).

It holds the PostgreSQL os_admin password (generated at prepare, never sent anywhere), whether the instance
is prepared, whether the server should be running (a stopped instance stays stopped after an
agent restart), the flavor the configuration was sized for, and the pids an outside driver
needs to find the processes.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from guest_agent.process import write_private

log = logging.getLogger(__name__)


@dataclass
class AgentState:
    instance_id: str
    datastore: str
    prepared: bool = False
    want_running: bool = False
    admin_password: str | None = None
    ram_mb: int = 1024
    vcpus: int = 1
    requested_version: str | None = None
    volume_size_gb: int | None = None
    bin_dir: str | None = None
    agent_pid: int | None = None
    server_pid: int | None = None
    # The attached configuration group's settings (name -> normalised value), written after
    # the platform's own settings at every start.
    overrides: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """Thread-safe load/save of AgentState; every save rewrites the file atomically."""

    def __init__(self, path: Path, instance_id: str, datastore: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.state = self._load(instance_id, datastore)

    def _load(self, instance_id: str, datastore: str) -> AgentState:
        if not self.path.exists():
            return AgentState(instance_id, datastore)
        doc = json.loads(self.path.read_text())
        known = {f.name for f in fields(AgentState)}
        state = AgentState(**{k: v for k, v in doc.items() if k in known})
        if state.instance_id != instance_id or state.datastore != datastore:
            raise ValueError(
                f"{self.path} belongs to {state.instance_id} ({state.datastore}), "
                f"not {instance_id} ({datastore})"
            )
        return state

    def update(self, **changes: object) -> AgentState:
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.state, key):
                    raise AttributeError(key)
                setattr(self.state, key, value)
            write_private(self.path, json.dumps(asdict(self.state), indent=2) + "\n")
            return self.state
