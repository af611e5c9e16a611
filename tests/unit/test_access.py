"""The access decision: a pure function of calling AE, called AE and address."""

from __future__ import annotations

import pytest

from isdr.domain.access import AccessPolicy, is_health_check, parse_networks, parse_titles


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


VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3"])
def test_the_health_check_is_recognised_from_this_machine_for_c_echo_only(address: str) -> None:
    assert is_health_check("ISDR_ECHO", address, "10.1.2.3", [VERIFICATION])
    assert not is_health_check("ISDR_ECHO", address, "10.1.2.3", [VERIFICATION, CT_STORAGE])
    assert not is_health_check("ISDR_ECHO", address, "10.1.2.3", [])


def test_the_health_checks_ae_title_from_another_machine_is_no_health_check() -> None:
    assert not is_health_check("ISDR_ECHO", "10.9.9.9", "10.1.2.3", [VERIFICATION])


def test_another_calling_ae_title_from_this_machine_is_no_health_check() -> None:
    assert not is_health_check("PACS", "127.0.0.1", "127.0.0.1", [VERIFICATION])


def test_for_the_health_check_the_allow_lists_fall_but_the_called_ae_title_stays() -> None:
    policy = AccessPolicy(parse_titles("PACS"), parse_networks("10.0.0.0/8"), "RELAY")
    health = policy.for_health_check()
    assert health.refusal("ISDR_ECHO", "RELAY", "127.0.0.1") is None
    assert health.refusal("ISDR_ECHO", "OTHER", "127.0.0.1") is not None
