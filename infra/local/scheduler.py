"""PingSource stand-in: fires each `schedule` function on its cron (or its local interval)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from croniter import croniter

from events.envelope import encode_binary, new_message
from events.schedule import PING_SOURCE_PREFIX, ScheduleTick
from infra.spec import ScheduleTrigger, Spec

log = logging.getLogger("troveless.scheduler")


class Scheduler:
    def __init__(self, spec: Spec, function_url: Callable[[str], str]) -> None:
        self.function_url = function_url
        self.jobs: dict[str, ScheduleTrigger] = {
            name: fn.trigger.schedule for name, fn in spec.by_kind("schedule").items() if fn.trigger.schedule
        }
        self._stop = threading.Event()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max(1, len(self.jobs)), thread_name_prefix="scheduler")
        self._http = httpx.Client(timeout=60)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def _next(self, trigger: ScheduleTrigger, after: float) -> float:
        if trigger.local_interval_s:
            return after + trigger.local_interval_s
        base = dt.datetime.fromtimestamp(after, dt.UTC)
        return croniter(trigger.cron, base).get_next(float)

    def _loop(self) -> None:
        now = time.time()
        due = {name: self._next(trigger, now) for name, trigger in self.jobs.items()}
        while not self._stop.is_set() and due:
            name = min(due, key=due.__getitem__)
            wait = due[name] - time.time()
            if wait > 0 and self._stop.wait(wait):
                return
            due[name] = self._next(self.jobs[name], max(due[name], time.time() - 1))
            with self._lock:
                if name in self._running:
                    continue  # the previous tick is still running; never overlap a job with itself
                self._running.add(name)
            self._pool.submit(self.fire, name)

    def fire(self, name: str) -> int | None:
        """POST one PingSource event to the function; returns the HTTP status."""
        try:
            tick = new_message(
                ScheduleTick.TYPE, PING_SOURCE_PREFIX + name.replace("_", "-"), self.jobs[name].data
            )
            headers, body = encode_binary(tick)
            response = self._http.post(self.function_url(name), headers=headers, content=body)
            if response.status_code >= 300:
                log.warning("schedule %s answered %s: %s", name, response.status_code, response.text[:200])
            return response.status_code
        except httpx.HTTPError as exc:
            log.warning("schedule %s could not be called: %s", name, exc)
            return None
        finally:
            with self._lock:
                self._running.discard(name)
