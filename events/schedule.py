"""Cron ticks: what a Knative PingSource (or the local scheduler) posts to a schedule function."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict

from events.base import Event

PING_SOURCE_PREFIX = "/apis/v1/namespaces/troveless/pingsources/"


class ScheduleTick(Event):
    """A PingSource event; its data is whatever the PingSource was configured with."""

    model_config = ConfigDict(extra="allow", frozen=True)
    TYPE: ClassVar[str] = "dev.knative.sources.ping"
