"""What the domain needs from the outside world, and how those calls fail.

Drivers (functions/drivers) implement these; core code depends only on this module, never
on a driver, so a Nova driver or a fake can stand in for the local one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from events.base import Event
from events.envelope import Message
from events.guest import StoreOptions


class ComputeError(Exception):
    """A compute operation failed; `transient` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class GuestError(Exception):
    """A guest agent refused or did not answer a command."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ServerSpec:
    instance_id: str
    datastore: str
    address: str
    volume_size_gb: int
    key: bytes
    broker_url: str
    # Cloud-init style user data for the agent: the signed prepare command (JSON).
    user_data: str | None = None
    # What a cloud boots (the openstack driver): the instance's flavor id and the datastore
    # version's image (datastore_versions.image_id). The local driver needs neither.
    flavor_id: str | None = None
    image_id: str | None = None


class Compute(Protocol):
    def pick_address(self, taken: set[str], datastore: str) -> str: ...
    def allocate_volume(self, instance_id: str, size_gb: int) -> str: ...
    def resize_volume(self, instance_id: str, size_gb: int) -> None: ...
    def delete_volume(self, instance_id: str) -> None: ...
    def create_server(self, spec: ServerSpec) -> str: ...
    def delete_server(self, instance_id: str) -> None: ...
    def resize_server(self, instance_id: str, flavor_id: str) -> bool:
        """Move the server to flavor `flavor_id` without waiting: idempotent, one move per
        call; True once it runs (ACTIVE) on that flavor, False while the move is under way."""
    # Side-effect-free questions for a workflow that waits (no driver ever blocks):
    def volume_ready(self, instance_id: str) -> bool: ...
    def server_status(self, instance_id: str) -> str | None:
        """BUILD, ACTIVE, ERROR, ... (Nova's words); None when there is no server."""


class StorageError(Exception):
    """The object store failed or refused (message safe to show)."""


class BackupStorage(Protocol):
    """Where backup objects live. The guest streams them; the control plane names them,
    checks them and deletes them."""

    def location(self, container: str, key: str) -> str: ...
    def check_container(self, container: str) -> None:
        """ValueError naming the rule if the container name is not valid for this store."""
    def store_options(self) -> StoreOptions: ...
    def delete(self, location: str) -> None: ...
    def exists(self, location: str) -> bool: ...
    def head(self, location: str) -> tuple[int, dict[str, str]] | None:
        """(size, metadata) of a complete object; None if there is none."""


class Guest(Protocol):
    def send(self, instance_id: str, address: str, secret: bytes, command: Event) -> Message | None: ...
