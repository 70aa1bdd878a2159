"""Talks to one instance's guest agent: signed command CloudEvents over HTTP."""

from __future__ import annotations

import httpx

from events.base import Event
from events.envelope import Message, decode_http, encode_binary
from events.errors import EventError
from events.guest import guest_command_url, instance_key, sign_command
from events.signing import Keyring, verify
from functions.core.ports import GuestError


class GuestClient:
    def __init__(self, timeout_s: float = 15.0) -> None:
        self.timeout_s = timeout_s
        self._http = httpx.Client(timeout=timeout_s)

    def send(self, instance_id: str, address: str, secret: bytes, command: Event) -> Message | None:
        """POST a signed command; returns the agent's (verified) reply event, or None on 202.

        Connection problems and 5xx are transient (the agent may still be starting);
        4xx means the agent refused the command and retrying the same command won't help."""
        key = instance_key(instance_id, secret)
        headers, body = encode_binary(sign_command(instance_id, secret, command))
        url = guest_command_url(address)
        try:
            response = self._http.post(url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise GuestError(f"guest agent at {url} not reachable: {exc}", transient=True) from exc
        if response.status_code == 202:
            return None
        if response.status_code == 200:
            try:
                reply = decode_http(dict(response.headers), response.content)
                verify(reply, Keyring([key]))
            except EventError as exc:
                raise GuestError(f"bad reply from the guest agent: {exc}", transient=True) from exc
            return reply
        try:
            detail = response.json()
        except ValueError:
            detail = {}
        reason = detail.get("reason") if isinstance(detail, dict) else None
        error = detail.get("error") if isinstance(detail, dict) else None
        transient = response.status_code >= 500 or (response.status_code == 409 and reason is None)
        raise GuestError(
            error or f"guest agent refused {command.TYPE}: HTTP {response.status_code} {response.text[:300]}",
            transient=transient,
            status=response.status_code,
            reason=reason,
        )
