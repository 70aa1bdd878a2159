"""Per-key HMAC-SHA256 signatures over a CloudEvent's identity and data.

The signature covers id, source, type, subject, time, sequence, partitionkey and the SHA-256
of the canonical JSON data. Each key is bound to the sources it may speak for, so a guest's
key can never sign events for another instance. Verification also enforces a time window
and, with a ReplayGuard, a strictly increasing per-source sequence.

Consumers that tolerate redelivery must check their inbox for (source, id) BEFORE asking
the replay guard: a legitimate duplicate carries an old sequence by definition.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from events.envelope import Message, canonical_json, parse_time
from events.errors import AuthenticationError, ReplayError
from events.replay import ReplayGuard, parse_sequence

SCHEME = "troveless-hmac-sha256-v1"
KEYID_ATTR = "keyid"
SIGNATURE_ATTR = "signature"
SIGNED_ATTRIBUTES = ("id", "source", "type", "subject", "time", "sequence", "partitionkey")
DEFAULT_WINDOW_S = 300.0


@dataclass(frozen=True)
class SigningKey:
    keyid: str
    secret: bytes
    # Sources this key may sign for: an exact source, or a prefix ending in "/".
    sources: tuple[str, ...]

    def allows(self, source: str) -> bool:
        return any(source == s or (s.endswith("/") and source.startswith(s)) for s in self.sources)


class Keyring:
    """Key lookup by id. Backed by a dict here; the control plane may build one per request."""

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        self._keys = {k.keyid: k for k in keys}

    def add(self, key: SigningKey) -> None:
        self._keys[key.keyid] = key

    def lookup(self, keyid: str) -> SigningKey | None:
        return self._keys.get(keyid)


def _signing_input(msg: Message) -> bytes:
    # A JSON array, not a joined string: no attribute value can shift into its neighbour.
    parts = [SCHEME]
    parts += [msg.get(name) for name in SIGNED_ATTRIBUTES]
    parts.append(hashlib.sha256(msg.data_bytes()).hexdigest())
    return canonical_json(parts)


def _mac(secret: bytes, msg: Message) -> str:
    digest = hmac.new(secret, _signing_input(msg), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(msg: Message, key: SigningKey) -> Message:
    """Return a copy of `msg` carrying `keyid` and `signature` extensions."""
    if not key.allows(msg.source):
        raise AuthenticationError(f"key {key.keyid!r} may not sign for source {msg.source!r}")
    return msg.with_attributes(**{KEYID_ATTR: key.keyid, SIGNATURE_ATTR: _mac(key.secret, msg)})


def verify(
    msg: Message,
    keyring: Keyring,
    *,
    now: dt.datetime | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    replay_guard: ReplayGuard | None = None,
) -> SigningKey:
    """Check signature, key scope, time window and (optionally) sequence. Returns the key."""
    keyid = msg.get(KEYID_ATTR)
    signature = msg.get(SIGNATURE_ATTR)
    if not keyid or not signature:
        raise AuthenticationError("event is not signed")
    key = keyring.lookup(keyid)
    if key is None:
        raise AuthenticationError(f"unknown key {keyid!r}")
    unsigned = msg.with_attributes(**{SIGNATURE_ATTR: None})
    if not hmac.compare_digest(_mac(key.secret, unsigned), signature):
        raise AuthenticationError("bad signature")
    if not key.allows(msg.source):
        raise AuthenticationError(f"key {keyid!r} may not speak for source {msg.source!r}")
    _check_window(msg, now or dt.datetime.now(dt.UTC), window_s)
    if replay_guard is not None:
        _check_sequence(msg, replay_guard)
    return key


def _check_window(msg: Message, now: dt.datetime, window_s: float) -> None:
    if not msg.time:
        raise ReplayError("signed events must carry `time`")
    try:
        sent = parse_time(msg.time)
    except ValueError as exc:
        raise ReplayError(f"bad time {msg.time!r}") from exc
    skew = abs((now - sent).total_seconds())
    if skew > window_s:
        raise ReplayError(f"event time {msg.time} is {skew:.0f}s away from now (window {window_s:.0f}s)")


def _check_sequence(msg: Message, guard: ReplayGuard) -> None:
    try:
        sequence = parse_sequence(msg.get("sequence"))
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc
    if sequence is None:
        raise ReplayError("signed events must carry `sequence`")
    if not guard.advance(msg.source, sequence):
        raise ReplayError(f"sequence {sequence} from {msg.source} is not newer than the last accepted")


def keyring_from_mapping(keys: Mapping[str, tuple[bytes, tuple[str, ...]]]) -> Keyring:
    return Keyring(SigningKey(keyid, secret, sources) for keyid, (secret, sources) in keys.items())
