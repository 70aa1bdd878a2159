"""Base class of every event payload: a frozen pydantic model with its CloudEvent type."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from events.envelope import Message, new_message

PREFIX = "troveless"


class Event(BaseModel):
    """An event's `data`. Subclasses set TYPE (exact type) or TYPE_PREFIX (a family of types)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str] = ""
    TYPE_PREFIX: ClassVar[str] = ""

    def event_type(self) -> str:
        """The CloudEvent `type` of this payload (families override this)."""
        return self.TYPE

    def to_message(
        self,
        source: str,
        *,
        subject: str | None = None,
        id: str | None = None,
        extensions: dict[str, str | None] | None = None,
    ) -> Message:
        return new_message(
            self.event_type(),
            source,
            self.model_dump(mode="json"),
            id=id,
            subject=subject,
            extensions=extensions,
        )

    @classmethod
    def from_data(cls, data: Any) -> Event:
        return cls.model_validate(data if data is not None else {})
