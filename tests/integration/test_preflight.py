"""`isdr fingerprints check --online`: every server and destination a fingerprint names is
reached before a patient's series is, against the stand-in and dcmtk's storescp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from isdr.app import check_fingerprints
from isdr.demo.standin import StandIn
from tests.helpers import dead_port, relay_settings
from tests.peers import Storescp


def write(folder: Path, name: str, **fields: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model_human_readable_id": "ct-model", "scus": []}
    (folder / name).write_text(json.dumps({**base, **fields}))


def online(tmp_path: Path, standin: StandIn) -> tuple[str, bool]:
    settings = relay_settings(tmp_path, CERT_FILE=standin.ca_file)
    lines, ok = check_fingerprints(settings.FINGERPRINT_DIR, settings)
    return "\n".join(lines), ok


def test_right_fingerprints_pass_with_tls_generation_model_and_c_echo_checked(
    tmp_path: Path, standin: StandIn, dcmtk: None
) -> None:
    pacs = Storescp(tmp_path / "pacs").start()
    try:
        folder = tmp_path / "fingerprints"
        scu = {"scu_ip": "127.0.0.1", "scu_port": pacs.port, "scu_ae_title": pacs.ae_title}
        write(folder, "v1.json", inference_server_url=standin.url_v1, scus=[scu])
        write(folder, "v2.json", inference_server_url=standin.url_v2, inference_server_api=2,
              inference_server_token=standin.internal_token)  # fmt: skip
        text, ok = online(tmp_path, standin)
    finally:
        pacs.stop()
    assert ok, text
    assert "TLS verified, answers as generation 1" in text
    assert "v2.json" in text and "knows the model 'ct-model'" in text
    assert "C-ECHO success" in text


def test_a_generation_1_fingerprint_pointed_at_a_generation_2_server_is_caught(
    tmp_path: Path, standin: StandIn
) -> None:
    write(
        tmp_path / "fingerprints", "wrong.json", inference_server_url=standin.url_v2 + "/api/tasks/"
    )
    text, ok = online(tmp_path, standin)
    assert not ok and "is it a generation-2 server?" in text


def test_an_unknown_model_an_untrusted_certificate_and_a_silent_destination_are_named(
    tmp_path: Path, standin: StandIn
) -> None:
    folder = tmp_path / "fingerprints"
    write(
        folder,
        "model.json",
        inference_server_url=standin.url_v2,
        inference_server_api=2,
        model_human_readable_id="no-such-model",
        inference_server_token=standin.internal_token,
    )
    with dead_port() as port:
        write(
            folder,
            "pacs.json",
            inference_server_url=standin.url_v1,
            scus=[{"scu_ip": "127.0.0.1", "scu_port": port, "scu_ae_title": "NOBODY"}],
        )
        text, ok = online(tmp_path, standin)
    assert not ok
    assert "does not know the model 'no-such-model' (it lists: ct-model, mr-model)" in text
    assert "ERROR  pacs.json: NOBODY@127.0.0.1" in text
    (tmp_path / "other").mkdir()
    other = StandIn(tmp_path / "other").start()  # its certificate is from another CA
    try:
        write(folder, "model.json", inference_server_url=other.url_v1)
        (folder / "pacs.json").unlink()
        text, ok = online(tmp_path, standin)
    finally:
        other.stop()
    assert not ok and "does not verify against CERT_FILE" in text
