"""Who gets a connection when peers take more than their share: pure decisions."""

from __future__ import annotations

from isdr.scp.admission import (
    Connection,
    ConnectionLimits,
    Throttle,
    admit,
    association_refusal,
)

LIMITS = ConnectionLimits(total=4, per_peer=2, associations=3)


def waiting(key: int, peer: str = "10.0.0.1", opened: float = 0.0) -> Connection:
    return Connection(key, peer, opened)


def associated(key: int, peer: str = "10.0.0.1", opened: float = 0.0) -> Connection:
    return Connection(key, peer, opened, associated=True)


def test_a_connection_under_every_bound_stays_and_closes_nothing() -> None:
    assert admit([waiting(1)], "10.0.0.1", LIMITS).evict == ()
    assert admit([waiting(1)], "10.0.0.1", LIMITS).refusal is None


def test_a_peer_at_its_bound_makes_room_by_closing_its_oldest_waiting_connection() -> None:
    open_now = [waiting(1, opened=5.0), waiting(2, opened=1.0), waiting(3, "10.0.0.2")]
    admission = admit(open_now, "10.0.0.1", LIMITS)
    assert admission.refusal is None
    assert [c.key for c in admission.evict] == [2]


def test_a_peer_whose_connections_are_all_associated_is_refused_and_nothing_closes() -> None:
    admission = admit([associated(1), associated(2)], "10.0.0.1", LIMITS)
    assert admission.evict == ()
    assert admission.refusal is not None
    assert "SCP_MAX_CONNECTIONS_PER_PEER" in admission.refusal


def test_at_the_total_bound_the_oldest_waiting_connection_of_any_peer_makes_room() -> None:
    open_now = [
        associated(1, "10.0.0.1"),
        waiting(2, "10.0.0.2", opened=3.0),
        waiting(3, "10.0.0.3", opened=2.0),
        associated(4, "10.0.0.4"),
    ]
    admission = admit(open_now, "10.0.0.5", LIMITS)
    assert [c.key for c in admission.evict] == [3]


def test_at_both_bounds_one_waiting_connection_of_the_peer_makes_room_in_both() -> None:
    open_now = [
        waiting(1, "10.0.0.1", opened=4.0),
        waiting(2, "10.0.0.1", opened=3.0),
        waiting(3, "10.0.0.2", opened=1.0),
        associated(4, "10.0.0.2"),
    ]
    admission = admit(open_now, "10.0.0.1", LIMITS)
    assert [c.key for c in admission.evict] == [2]


def test_when_every_connection_is_associated_the_new_one_is_refused() -> None:
    open_now = [associated(k, f"10.0.0.{k}") for k in range(4)]
    refusal = admit(open_now, "10.0.0.9", LIMITS).refusal
    assert refusal is not None and "SCP_MAX_CONNECTIONS)" in refusal


def test_associations_are_bounded_apart_from_waiting_connections() -> None:
    open_now = [associated(1), associated(2, "b"), waiting(3, "c"), waiting(4, "d")]
    assert association_refusal(open_now, 3, LIMITS) is None
    full = [*open_now[:2], associated(5, "e"), waiting(3, "c")]
    refusal = association_refusal(full, 3, LIMITS)
    assert refusal is not None and "SCP_MAX_ASSOCIATIONS" in refusal


def test_a_refusal_is_logged_once_per_peer_per_minute_with_a_count_of_the_rest() -> None:
    throttle = Throttle(every=60.0)
    assert throttle.due("10.0.0.1", 0.0) == 0
    assert throttle.due("10.0.0.1", 10.0) is None
    assert throttle.due("10.0.0.1", 20.0) is None
    assert throttle.due("10.0.0.2", 20.0) == 0
    assert throttle.due("10.0.0.1", 61.0) == 2


def test_a_connection_that_has_said_nothing_makes_room_before_one_whose_request_is_coming() -> None:
    sender = Connection(1, "10.0.0.1", opened=1.0, spoken=True)
    idle = Connection(2, "10.0.0.1", opened=5.0)
    assert [c.key for c in admit([sender, idle], "10.0.0.1", LIMITS).evict] == [2]
