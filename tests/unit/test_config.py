from __future__ import annotations

from pathlib import Path

import pytest

from isdr.config import load_settings
from isdr.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False)],
)
def test_booleans_parse_as_booleans(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("DELETE_ON_POST", raw)
    assert load_settings().DELETE_ON_POST is expected


def test_intervals_accept_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POST_INTERVAL", "0.5")
    assert load_settings().POST_INTERVAL == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCP_PORT", "eleven"),
        ("SCP_PORT", "70000"),
        ("DELETE_ON_POST", "maybe"),
        ("POST_AFTER", "-1"),
        ("LOG_LEVEL", "CHATTY"),
        ("SCP_AE_TITLE", "A" * 17),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_database_defaults_to_a_sqlite_file_in_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert load_settings().database_url == f"sqlite:///{tmp_path / 'isdr.sqlite3'}"


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SCP_TLS_CERT_FILE": "scp.pem"}, "SCP_TLS_KEY_FILE"),
        ({"SCP_TLS_CLIENT_CA_FILE": "ca.pem"}, "SCP_TLS_CLIENT_CA_FILE needs"),
        (
            {"SCP_TLS_CERT_FILE": "a.pem", "SCP_TLS_KEY_FILE": "a.key", "RECEIVER": "dcmtk"},
            "RECEIVER=pynetdicom",
        ),
    ],
)
def test_incomplete_tls_settings_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_an_unreadable_tls_file_stops_the_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "scp.pem"
    monkeypatch.setenv("SCP_TLS_CERT_FILE", str(missing))
    monkeypatch.setenv("SCP_TLS_KEY_FILE", str(tmp_path / "scp.key"))
    with pytest.raises(ConfigError, match=f"SCP_TLS_CERT_FILE.*cannot read {missing}"):
        load_settings().scp_tls_context()


def test_a_key_that_does_not_match_its_certificate_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    first, second = ca.issue_cert("a.example.org"), ca.issue_cert("b.example.org")
    first.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    second.private_key_pem.write_to_path(str(tmp_path / "b.key"))
    monkeypatch.setenv("SCP_TLS_CERT_FILE", str(tmp_path / "a.pem"))
    monkeypatch.setenv("SCP_TLS_KEY_FILE", str(tmp_path / "b.key"))
    with pytest.raises(ConfigError, match="cannot be used together"):
        load_settings().scp_tls_context()


@pytest.mark.parametrize("name", ["DELETE_ON_POST", "ASK_INFERENCE_SERVER_TO_DELETE_TASK"])
def test_an_empty_boolean_of_the_original_relay_means_false(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "")  # the original README: set to "" if you don't want it
    assert getattr(load_settings(), name) is False


def test_an_invalid_boolean_of_the_original_relay_still_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASK_INFERENCE_SERVER_TO_DELETE_TASK", "sometimes")
    with pytest.raises(ConfigError, match="ASK_INFERENCE_SERVER_TO_DELETE_TASK='sometimes'"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SCP_AE_TITLE", "ÄRZTE", "printable ASCII"),
        ("SCP_AE_TITLE", "    ", "only spaces"),
        ("SCP_AE_TITLE", "A\\B", "no backslash"),
        ("POST_TIMEOUT", "inf", "finite"),
        ("GET_TIMEOUT", "nan", "finite"),
        ("MIN_FREE_DISK_MB", "inf", "finite"),
        ("OUTPUT_MAX_MB", "inf", "finite"),
        ("JOB_FILES_RETENTION_HOURS", "inf", "finite"),
        ("DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
        ("MAX_PDU_SIZE", "10", "at least 4096"),
    ],
)
def test_a_hostile_value_is_refused_naming_the_variable_and_why(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as refused:
        load_settings()
    assert says in str(refused.value)


def test_a_database_url_that_does_not_parse_is_not_quoted() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", "postgresql://isdr:pass word@db:port/isdr")
        with pytest.raises(ConfigError, match="DATABASE_URL") as refused:
            load_settings()
    assert "pass word" not in str(refused.value)


@pytest.mark.parametrize(("name", "value"), [("MAX_PDU_SIZE", "0"), ("SCP_AE_TITLE", "MY AE")])
def test_the_limits_leave_the_usual_values_alone(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert str(getattr(load_settings(), name)) == value


def test_a_store_scp_built_without_settings_has_the_settings_defaults(tmp_path: Path) -> None:
    from isdr.app import _receive_limits
    from isdr.scp.server import DEFAULT_LIMITS
    from tests.helpers import relay_settings

    assert _receive_limits(relay_settings(tmp_path)) == DEFAULT_LIMITS
