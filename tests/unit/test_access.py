"""The access decision: a pure function of calling AE, called AE and address."""

from __future__ import annotations

import pytest

from isdr.domain.access import AccessPolicy, parse_networks, parse_titles


def test_an_open_policy_lets_anyone_in() -> None:
    assert AccessPolicy().refusal("ANY", "THING", "203.0.113.9") is None


def test_an_ipv4_mapped_ipv6_address_is_matched_against_ipv4_networks() -> None:
    policy = AccessPolicy(networks=parse_networks("10.0.0.0/8"))
    assert policy.refusal("A", "B", "::ffff:10.1.2.3") is None
    assert policy.refusal("A", "B", "::ffff:11.1.2.3") is not None


def test_the_address_is_checked_before_the_ae_title() -> None:
    policy = AccessPolicy(parse_titles("GOOD"), parse_networks("10.0.0.1"))
    refusal = policy.refusal("BAD", "X", "127.0.0.1")
    assert refusal is not None and "ALLOWED_PEERS" in refusal.reason


@pytest.mark.parametrize("text", ["10.0.0.0/33", "not-an-address", "10.0.0.0/8,,x"])
def test_a_bad_network_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="is not an address or network"):
        parse_networks(text)


def test_an_ae_title_longer_than_16_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        parse_titles("SHORT,A_TITLE_FAR_TOO_LONG")
