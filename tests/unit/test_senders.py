"""Where "the sender" of a job is: SENDERS_FILE, its checks, and the pure choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isdr.domain.destination import Destination, ToSender
from isdr.domain.senders import KnownSenders, Sent, resolve
from isdr.errors import ConfigError
from isdr.fingerprints.loader import load_text
from isdr.fingerprints.senders import load_senders

KNOWN = KnownSenders.model_validate({"senders": [
    {"ae_title": "CT_A", "host": "10.0.0.5", "port": 104},
    {"ae_title": "MR_B", "host": "pacs-b.hospital.example", "port": 11112},
]})  # fmt: skip


def test_a_known_sender_gets_its_predictions_where_the_file_says() -> None:
    found, refused = resolve([Sent("CT_A", "10.0.0.5")], KNOWN, 0)
    assert found == [Destination.at("10.0.0.5", 104, "CT_A")] and refused == []
    found, _ = resolve([Sent("MR_B", "10.9.9.9")], KNOWN, 0)  # a name: not checked
    assert found == [Destination.at("pacs-b.hospital.example", 11112, "MR_B")]


def test_a_known_title_from_another_address_gets_nothing() -> None:
    found, refused = resolve([Sent("CT_A", "10.0.0.66")], KNOWN, 4242)
    assert found == [] and "called from 10.0.0.66" in refused[0].reason
    found, _ = resolve([Sent("CT_A", "::ffff:10.0.0.5")], KNOWN, 0)  # the same, dual-stack
    assert found == [Destination.at("10.0.0.5", 104, "CT_A")]


def test_an_unknown_title_gets_the_fallback_or_nothing() -> None:
    found, refused = resolve([Sent("OTHER", "10.0.0.7")], KNOWN, 0)
    assert found == [] and "not in SENDERS_FILE" in refused[0].reason
    found, refused = resolve([Sent("OTHER", "10.0.0.7")], KNOWN, 4242)
    assert found == [Destination.at("10.0.0.7", 4242, "OTHER")] and refused == []


def test_files_placed_by_hand_have_no_sender() -> None:
    found, refused = resolve([Sent("", "")], KNOWN, 4242)
    assert found == [] and "placed in INCOMING_DIR" in refused[0].reason
    found, refused = resolve([Sent("", "10.0.0.7")], KNOWN, 4242)  # no AE title
    assert found == [] and len(refused) == 1


def test_a_series_from_several_senders_goes_back_to_none() -> None:
    found, refused = resolve([Sent("CT_A", "*")], KNOWN, 4242)
    assert found == [] and "several senders" in refused[0].reason


def test_each_sender_of_a_study_once_in_order() -> None:
    sent = [Sent("MR_B", "10.1.1.1"), Sent("CT_A", "10.0.0.5"), Sent("MR_B", "10.1.1.1")]
    found, _ = resolve(sent, KNOWN, 0)
    assert [where.ae_title for where in found] == ["MR_B", "CT_A"]


def test_the_senders_file_is_checked_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "senders.json"
    assert load_senders(path) == KnownSenders()  # none: nobody known
    path.write_text(json.dumps({"senders": [{"ae_title": "A", "host": "h", "prot": 104}]}))
    with pytest.raises(ConfigError, match=r"senders\.0\.prot: unknown key"):
        load_senders(path)
    twice = {"ae_title": "A", "host": "h", "port": 1}
    path.write_text(json.dumps({"senders": [twice, twice]}))
    with pytest.raises(ConfigError, match="an AE title may appear once: A"):
        load_senders(path)
    path.write_text(json.dumps({"senders": [{"ae_title": "   ", "host": "h", "port": 1}]}))
    with pytest.raises(ConfigError, match=r"senders\.0\.ae_title"):
        load_senders(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable as JSON"):
        load_senders(path)


def test_a_fingerprint_names_the_sender_beside_its_nodes() -> None:
    text = json.dumps({
        "model_human_readable_id": "m", "inference_server_url": "https://x/",
        "scus": [{"scu_ip": "10.0.0.1", "scu_port": 104, "scu_ae_title": "PACS"},
                 {"sender": True}],
    })  # fmt: skip
    loaded = load_text("f.json", text)
    assert not isinstance(loaded, list)
    assert loaded.to_sender and loaded.nodes == [Destination.at("10.0.0.1", 104, "PACS")]
    assert loaded.scus[1] == ToSender(sender=True)


def test_a_typo_in_a_sender_entry_is_named_at_its_place() -> None:
    text = '{"model_human_readable_id": "m", "inference_server_url": "https://x/",\n'
    text += ' "scus": [{"sendr": true}]}'
    problems = load_text("f.json", text)
    assert isinstance(problems, list)
    [typo] = [p for p in problems if p.field == "scus.0.sendr"]
    assert typo.line == 2 and "did you mean 'sender'" in typo.message
