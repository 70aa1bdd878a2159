"""Log records that say which request or event they belong to; text or JSON lines.

`TROVELESS_LOG_FORMAT=json` (functions/settings.py) writes one JSON object per line, as
log collectors on Knative (Fluent Bit, Vector, Cloud Logging) expect on stdout/stderr;
`text` (the local default) keeps the familiar one-line format. Either way every record
carries `request_id` (API requests: the X-Openstack-Request-Id answered to the client) and
`event_id` / `event_type` (event functions: the CloudEvent being handled) when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from typing import Any

from functions.core import context

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(context_suffix)s"
TEXT_DATEFMT = "%H:%M:%S"

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_CONTEXT_FIELDS = ("request_id", "event_id", "event_type", "function")

_installed = False
_install_lock = threading.Lock()


def install_record_factory() -> None:
    """Stamp every record with the current request and event (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            request = context.current_request()
            event = context.current_event()
            record.request_id = request.request_id if request else None
            record.event_id = event.event_id if event else None
            record.event_type = event.event_type if event else None
            record.function = event.function if event else None
            suffix = ""
            if request:
                suffix = f" [{request.request_id}]"
            elif event:
                suffix = f" [event {event.event_id}]"
            record.context_suffix = suffix
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context ids, any
    `extra=` fields, and the exception with its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                doc[name] = value
        for name, value in vars(record).items():
            if name in _STANDARD or name in _CONTEXT_FIELDS or name == "context_suffix" or name in doc:
                continue
            doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context_suffix"):
            record.context_suffix = ""
        return super().format(record)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return _TextFormatter(TEXT_FORMAT, TEXT_DATEFMT)
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def configure(fmt: str = "text", *, level: int = logging.INFO, stream: Any = None, force: bool = True) -> None:
    """Configure the root logger: one stream handler in the chosen format.

    `force=False` leaves a root logger that already has handlers alone (a function running
    under a host that configured logging itself) and only adds the context stamping."""
    install_record_factory()
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
