"""HMAC signatures, key scopes, time window and per-source sequences."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from events.envelope import Message, format_time, new_message
from events.errors import AuthenticationError, PermanentEventError, ReplayError
from events.replay import (
    SEQUENCE_WIDTH,
    InMemoryReplayGuard,
    SequenceCounter,
    format_sequence,
    parse_sequence,
)
from events.signing import (
    DEFAULT_WINDOW_S,
    KEYID_ATTR,
    SIGNATURE_ATTR,
    Keyring,
    SigningKey,
    keyring_from_mapping,
    sign,
    verify,
)

GUEST_SOURCE = "/troveless/guests/inst-1"
GUEST_KEY = SigningKey("guest-inst-1", b"s3cret-1", (GUEST_SOURCE,))
OTHER_KEY = SigningKey("guest-inst-2", b"s3cret-2", ("/troveless/guests/inst-2",))
PREFIX_KEY = SigningKey("control", b"s3cret-c", ("/troveless/control/",))
KEYRING = Keyring([GUEST_KEY, OTHER_KEY, PREFIX_KEY])
NOW = dt.datetime(2024, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def _msg(source: str = GUEST_SOURCE, *, sequence: int | None = 1, **extra: str) -> Message:
    extensions: dict[str, str | None] = {"partitionkey": "inst-1", **extra}
    if sequence is not None:
        extensions["sequence"] = format_sequence(sequence)
    return new_message(
        "troveless.guest.status",
        source,
        {"status": "ACTIVE", "volume": {"used": 1.5}},
        subject="instances/inst-1",
        time=NOW,
        extensions=extensions,
    )


def test_sign_then_verify_returns_the_key() -> None:
    signed = sign(_msg(), GUEST_KEY)
    assert signed.get(KEYID_ATTR) == "guest-inst-1"
    assert signed.get(SIGNATURE_ATTR)
    assert verify(signed, KEYRING, now=NOW) is GUEST_KEY


def test_signature_survives_key_order_in_data() -> None:
    signed = sign(_msg(), GUEST_KEY)
    reordered = Message(dict(signed.attributes), {"volume": {"used": 1.5}, "status": "ACTIVE"})
    assert verify(reordered, KEYRING, now=NOW) is GUEST_KEY


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: Message(dict(m.attributes), {"status": "ERROR", "volume": {"used": 1.5}}),
        lambda m: Message(dict(m.attributes), None),
        lambda m: m.with_attributes(type="troveless.guest.other"),
        lambda m: m.with_attributes(id="another-id"),
        lambda m: m.with_attributes(subject="instances/inst-9"),
        lambda m: m.with_attributes(subject=None),
        lambda m: m.with_attributes(time=format_time(NOW + dt.timedelta(seconds=1))),
        lambda m: m.with_attributes(sequence=format_sequence(2)),
        lambda m: m.with_attributes(sequence=None),
        lambda m: m.with_attributes(partitionkey="inst-2"),
        lambda m: m.with_attributes(signature=m.get("signature")[:-2] + "AA"),
    ],
    ids=["data", "data-none", "type", "id", "subject", "subject-removed", "time", "sequence",
         "sequence-removed", "partitionkey", "signature"],
)
def test_tampering_after_signing_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    signed = sign(_msg(), GUEST_KEY)
    with pytest.raises(AuthenticationError) as info:
        verify(tamper(signed), KEYRING, now=NOW)
    assert isinstance(info.value, PermanentEventError)


def test_signed_fields_cannot_be_shifted_across_a_newline() -> None:
    """Signed fields are framed, so a value containing a newline cannot be moved into the
    neighbouring field (type "t" + subject "A\\nB" vs type "t\\nA" + subject "B")."""
    signed = sign(new_message("t", GUEST_SOURCE, {}, subject="A\nB", time=NOW), GUEST_KEY)
    relabelled = signed.with_attributes(type="t\nA", subject="B")
    with pytest.raises(AuthenticationError):
        verify(relabelled, KEYRING, now=NOW)


def test_unsigned_is_refused() -> None:
    with pytest.raises(AuthenticationError):
        verify(_msg(), KEYRING, now=NOW)
    signed = sign(_msg(), GUEST_KEY)
    with pytest.raises(AuthenticationError):
        verify(signed.with_attributes(signature=None), KEYRING, now=NOW)
    with pytest.raises(AuthenticationError):
        verify(signed.with_attributes(keyid=None), KEYRING, now=NOW)


def test_unknown_keyid_is_refused() -> None:
    signed = sign(_msg(), GUEST_KEY)
    with pytest.raises(AuthenticationError):
        verify(signed, Keyring([OTHER_KEY]), now=NOW)
    with pytest.raises(AuthenticationError):
        verify(signed.with_attributes(keyid="nobody"), KEYRING, now=NOW)


def test_key_with_the_same_id_but_another_secret_is_refused() -> None:
    signed = sign(_msg(), GUEST_KEY)
    impostor = Keyring([SigningKey(GUEST_KEY.keyid, b"wrong", GUEST_KEY.sources)])
    with pytest.raises(AuthenticationError):
        verify(signed, impostor, now=NOW)


def test_key_cannot_sign_outside_its_sources() -> None:
    with pytest.raises(AuthenticationError):
        sign(_msg("/troveless/guests/inst-2"), GUEST_KEY)


def test_message_relabelled_to_another_source_fails() -> None:
    signed = sign(_msg(), GUEST_KEY)
    with pytest.raises(AuthenticationError):
        verify(signed.with_attributes(source="/troveless/guests/inst-2"), KEYRING, now=NOW)
    # even with the other instance's key id, the signature does not match
    forged = signed.with_attributes(source="/troveless/guests/inst-2", keyid=OTHER_KEY.keyid)
    with pytest.raises(AuthenticationError):
        verify(forged, KEYRING, now=NOW)


def test_scope_is_checked_at_verify_time_too() -> None:
    # The keyring's view of the key's scope is the one that counts.
    signed = sign(_msg(), GUEST_KEY)
    narrowed = Keyring([SigningKey(GUEST_KEY.keyid, GUEST_KEY.secret, ("/troveless/guests/inst-2",))])
    with pytest.raises(AuthenticationError):
        verify(signed, narrowed, now=NOW)


def test_prefix_scopes_allow_sub_sources_only() -> None:
    assert PREFIX_KEY.allows("/troveless/control/api")
    assert PREFIX_KEY.allows("/troveless/control/tasks/x")
    assert not PREFIX_KEY.allows("/troveless/controller/api")
    assert not PREFIX_KEY.allows("/troveless/control")
    assert not PREFIX_KEY.allows("/troveless/")
    # an exact scope (no trailing slash) is not a prefix
    assert GUEST_KEY.allows(GUEST_SOURCE)
    assert not GUEST_KEY.allows(GUEST_SOURCE + "/sub")
    assert not GUEST_KEY.allows(GUEST_SOURCE + "0")

    signed = sign(_msg("/troveless/control/api"), PREFIX_KEY)
    assert verify(signed, KEYRING, now=NOW) is PREFIX_KEY
    with pytest.raises(AuthenticationError):
        sign(_msg("/troveless/controller/api"), PREFIX_KEY)


@pytest.mark.parametrize("offset_s", [-DEFAULT_WINDOW_S - 1, DEFAULT_WINDOW_S + 1, -86400, 86400])
def test_time_outside_the_window_is_a_replay(offset_s: float) -> None:
    signed = sign(_msg(), GUEST_KEY)
    with pytest.raises(ReplayError) as info:
        verify(signed, KEYRING, now=NOW + dt.timedelta(seconds=offset_s))
    assert isinstance(info.value, PermanentEventError)


@pytest.mark.parametrize("offset_s", [-DEFAULT_WINDOW_S + 1, 0, DEFAULT_WINDOW_S - 1])
def test_time_inside_the_window_passes(offset_s: float) -> None:
    signed = sign(_msg(), GUEST_KEY)
    assert verify(signed, KEYRING, now=NOW + dt.timedelta(seconds=offset_s)) is GUEST_KEY


def test_custom_window() -> None:
    signed = sign(_msg(), GUEST_KEY)
    later = NOW + dt.timedelta(seconds=10)
    assert verify(signed, KEYRING, now=later, window_s=11)
    with pytest.raises(ReplayError):
        verify(signed, KEYRING, now=later, window_s=9)


def test_signed_event_without_time_is_a_replay() -> None:
    unsigned = _msg().with_attributes(time=None)
    signed = sign(unsigned, GUEST_KEY)
    with pytest.raises(ReplayError):
        verify(signed, KEYRING, now=NOW)


def test_replay_guard_accepts_increasing_sequences() -> None:
    guard = InMemoryReplayGuard()
    for seq in (1, 2, 10, 11, 1000):
        verify(sign(_msg(sequence=seq), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)


@pytest.mark.parametrize("again", [5, 4, 0])
def test_replay_guard_refuses_repeated_or_lower_sequences(again: int) -> None:
    guard = InMemoryReplayGuard()
    verify(sign(_msg(sequence=5), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)
    with pytest.raises(ReplayError):
        verify(sign(_msg(sequence=again), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)
    # the guard did not move backwards
    verify(sign(_msg(sequence=6), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)


def test_the_same_signed_message_twice_is_a_replay() -> None:
    guard = InMemoryReplayGuard()
    signed = sign(_msg(sequence=7), GUEST_KEY)
    verify(signed, KEYRING, now=NOW, replay_guard=guard)
    with pytest.raises(ReplayError):
        verify(signed, KEYRING, now=NOW, replay_guard=guard)


def test_sequences_are_per_source() -> None:
    guard = InMemoryReplayGuard()
    verify(sign(_msg(sequence=100), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)
    other = _msg("/troveless/guests/inst-2", sequence=1)
    verify(sign(other, OTHER_KEY), KEYRING, now=NOW, replay_guard=guard)
    with pytest.raises(ReplayError):
        verify(sign(_msg(sequence=100), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)


def test_missing_sequence_with_a_guard_is_a_replay() -> None:
    signed = sign(_msg(sequence=None), GUEST_KEY)
    assert verify(signed, KEYRING, now=NOW) is GUEST_KEY  # fine without a guard
    with pytest.raises(ReplayError):
        verify(signed, KEYRING, now=NOW, replay_guard=InMemoryReplayGuard())


def test_malformed_sequence_with_a_guard_is_a_replay() -> None:
    signed = sign(_msg(sequence=None).with_attributes(sequence="-1"), GUEST_KEY)
    with pytest.raises(ReplayError):
        verify(signed, KEYRING, now=NOW, replay_guard=InMemoryReplayGuard())


def test_refused_signature_does_not_advance_the_guard() -> None:
    guard = InMemoryReplayGuard()
    forged = sign(_msg(sequence=50), GUEST_KEY).with_attributes(subject="instances/other")
    with pytest.raises(AuthenticationError):
        verify(forged, KEYRING, now=NOW, replay_guard=guard)
    verify(sign(_msg(sequence=1), GUEST_KEY), KEYRING, now=NOW, replay_guard=guard)


def test_format_sequence_pads_so_lexical_order_is_numeric_order() -> None:
    values = [0, 1, 2, 9, 10, 11, 99, 100, 12345, 10**15, 1_717_000_000_000_000, 10**19]
    texts = [format_sequence(v) for v in values]
    assert all(len(t) == SEQUENCE_WIDTH for t in texts)
    assert sorted(texts) == texts
    assert sorted(reversed(texts)) == texts
    assert [parse_sequence(t) for t in texts] == values
    assert format_sequence(42) == "00000000000000000042"
    with pytest.raises(ValueError):
        format_sequence(-1)


def test_parse_sequence() -> None:
    assert parse_sequence(None) is None
    assert parse_sequence("0007") == 7
    for bad in ("", "-1", "1.5", "abc", " 1"):
        with pytest.raises(ValueError):
            parse_sequence(bad)


def test_sequence_counter_is_strictly_increasing_across_threads() -> None:
    counter = SequenceCounter()
    per_thread = 2000
    results: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def work(out: list[int]) -> None:
        start.wait()
        for _ in range(per_thread):
            out.append(counter.next())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert all(a < b for a, b in zip(out, out[1:])), "not increasing within a thread"
    everything = [v for out in results for v in out]
    assert len(set(everything)) == len(everything) == per_thread * len(results)
    assert counter.next() > max(everything)


def test_sequence_counter_starts_at_current_time() -> None:
    import time

    before = time.time_ns() // 1000
    value = SequenceCounter().next()
    assert value >= before
    assert len(format_sequence(value)) == SEQUENCE_WIDTH


def test_keyring_from_mapping_and_add() -> None:
    ring = keyring_from_mapping({"k": (b"secret", ("/a/",))})
    key = ring.lookup("k")
    assert key == SigningKey("k", b"secret", ("/a/",))
    assert ring.lookup("missing") is None
    ring.add(GUEST_KEY)
    assert verify(sign(_msg(), GUEST_KEY), ring, now=NOW) is GUEST_KEY
