"""Every setting of the relay, read once from the environment and validated.

The variable names of the original relay keep their meaning; every variable is documented
in docs/configuration.md, which is generated from this class. Times are seconds and accept
fractions.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from isdr.domain.access import AccessPolicy, parse_networks, parse_titles
from isdr.errors import ConfigError
from isdr.tls import TlsFilesError, server_context

Seconds = Annotated[float, Field(gt=0)]
# The original relay read these with bool(os.environ.get(...)): its README said to set
# ASK_INFERENCE_SERVER_TO_DELETE_TASK="" for no. Empty still means false here.
ORIGINAL_BOOLEANS = ("DELETE_ON_POST", "ASK_INFERENCE_SERVER_TO_DELETE_TASK")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_PDU_SIZE = 4096  # bytes: below it a C-STORE's command set and data barely fit
NOT_SHOWN = ("DATABASE_URL", "API_TOKEN")  # secrets: an error never quotes the value


MIN_TOKEN_LENGTH = 16  # a bearer token shorter than this is guessable


class Settings(BaseSettings):
    """The relay's configuration; one field per environment variable."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        extra="ignore",
        frozen=True,
        validate_default=True,
        allow_inf_nan=False,  # inf and nan are no size and no timeout
    )

    # --- the Store SCP (original relay) ---
    SCP_HOSTNAME: str = Field("127.0.0.1", description="address the Store SCP listens on")
    SCP_PORT: int = Field(11112, ge=1, le=65535, description="TCP port of the Store SCP")
    SCP_AE_TITLE: str = Field(
        "DICOM_NODE", min_length=1, max_length=16, description="AE title of the Store SCP"
    )
    INCOMING_DIR: Path = Field(
        Path("data/incoming"), description="root of the tree the received instances go to"
    )
    PYNETDICOM_LOG_LEVEL: str = Field(
        "none", description="pynetdicom's own log level: none, or a level name"
    )
    ALLOWED_CALLING_AE_TITLES: str = Field(
        "", description="comma-separated AE titles allowed to send; empty: any"
    )
    ALLOWED_PEERS: str = Field(
        "", description="comma-separated addresses or networks allowed to send; empty: any"
    )
    REQUIRE_CALLED_AE_TITLE: bool = Field(
        False, description="reject associations whose called AE title is not SCP_AE_TITLE"
    )
    SCP_TLS_CERT_FILE: str = Field(
        "", description="PEM certificate (chain) of the Store SCP; set with the key: TLS only"
    )
    SCP_TLS_KEY_FILE: str = Field("", description="PEM private key of SCP_TLS_CERT_FILE")
    SCP_TLS_CLIENT_CA_FILE: str = Field(
        "", description="CA bundle senders' certificates must verify against; empty: none asked"
    )

    # --- fingerprints and the InferenceServer (original relay) ---
    FINGERPRINT_DIR: Path = Field(
        Path("CONFIGURATION/FINGERPRINTS"), description="folder of fingerprint JSON files"
    )
    CERT_FILE: Path = Field(
        Path("CONFIGURATION/CERTS/cert.crt"),
        description="CA bundle trusted for the InferenceServers' TLS",
    )
    POST_INTERVAL: Seconds = Field(1.0, description="how often quiet series are looked for")
    POST_AFTER: Seconds = Field(10.0, description="quiet time after which a series is done")
    POST_TIMEOUT: Seconds = Field(
        60.0,
        description="connect timeout of every request to an InferenceServer, and the time "
        "its whole answer may take (plus TRANSFER_MIN_RATE_KB's allowance for big bodies)",
    )
    DELETE_ON_POST: bool = Field(True, description="delete a series' files once submitted")
    GET_INTERVAL: Seconds = Field(15.0, description="how often a submitted job is polled")
    GET_TIMEOUT: Seconds = Field(86400.0, description="how long a job may take on the server")
    POST_MAX_ATTEMPTS: int = Field(
        10, ge=1, description="submit attempts of a job before it fails (connection errors, 5xx)"
    )
    POST_RETRY_DELAY: Seconds = Field(
        5.0, description="wait before the second submit attempt; doubles each time, up to 600 s"
    )
    POST_AMBIGUOUS_RESENDS: int = Field(
        2,
        ge=0,
        description="times a job is sent again after a submit that got no answer once the "
        "whole archive had gone (each may leave a task on the server); then it fails",
    )
    ASK_INFERENCE_SERVER_TO_DELETE_TASK: bool = Field(
        True, description="delete the remote task once its predictions are delivered"
    )

    # --- new in ISDR ---
    DATA_DIR: Path = Field(Path("data"), description="where the database and job files live")
    DATABASE_URL: str = Field(
        "", description="SQLAlchemy URL; empty means a SQLite file isdr.sqlite3 in DATA_DIR"
    )
    LOG_LEVEL: str = Field("INFO", description="the relay's log level")
    LOG_FORMAT: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line"
    )
    FSYNC_WRITES: bool = Field(
        False,
        description="fsync each received file and its folder before answering Success "
        "(survives power loss, costs throughput)",
    )
    MIN_FREE_DISK_MB: float = Field(
        1024.0, ge=0, description="free space kept in reserve; below it C-STOREs get 0xA700"
    )
    MAX_PDU_SIZE: int = Field(
        131072,
        ge=0,
        le=0xFFFFFFFF,
        description=f"largest PDU the Store SCP accepts (0 = none negotiated, 64 MiB held to; "
        f"else {MIN_PDU_SIZE} or more)",
    )
    MAX_INSTANCE_MB: float = Field(
        2048.0,
        gt=0,
        description="largest data set the Store SCP takes (held in memory while it arrives);"
        " less when the disk has less room above MIN_FREE_DISK_MB",
    )
    SCP_ASSOCIATE_TIMEOUT: Seconds = Field(
        10.0,
        description="time a new connection has to send its whole A-ASSOCIATE-RQ (and finish "
        "its TLS handshake)",
    )
    SCP_NETWORK_TIMEOUT: Seconds = Field(
        120.0,
        description="in an association, a peer silent this long, or a PDU not whole after "
        "this long, is dropped",
    )
    SCP_MAX_ASSOCIATIONS: int = Field(
        64, ge=1, le=1024, description="associations the Store SCP holds at once"
    )
    SCP_MAX_CONNECTIONS: int = Field(
        128,
        ge=1,
        le=900,  # pynetdicom watches sockets with select(), blind past descriptor 1023
        description="connections open at once, associated or not; over it, the oldest not yet "
        "associated is closed",
    )
    SCP_MAX_CONNECTIONS_PER_PEER: int = Field(
        32, ge=1, le=900, description="the same, from one peer address"
    )
    RECEIVER: Literal["pynetdicom", "dcmtk"] = Field(
        "pynetdicom",
        description="pynetdicom: the relay's own Store SCP, Success once recorded; dcmtk: "
        "fast-ingest, dcmtk's storescp writes and the inbox records",
    )
    WATCH_INCOMING: bool = Field(
        True, description="record files that appear under INCOMING_DIR by other means"
    )
    STOP_TIMEOUT: Seconds = Field(
        7.0, description="on SIGTERM, how long C-STOREs in flight may take to finish"
    )
    GET_WORKERS: int = Field(
        4, ge=1, le=64, description="threads that poll InferenceServers (however many jobs)"
    )
    GET_WORKERS_PER_SERVER: int = Field(
        2,
        ge=1,
        le=64,
        description="of the GET_WORKERS, how many may poll one InferenceServer at once (a slow "
        "server cannot hold them all)",
    )
    TRANSFER_MIN_RATE_KB: float = Field(
        100.0,
        gt=0,
        description="slowest average rate (kB/s) of an upload or download to an "
        "InferenceServer: an exchange is cut after POST_TIMEOUT plus 1 s per this many kB moved",
    )
    OUTPUT_MAX_MB: float = Field(
        4096.0, gt=0, description="largest output a job may download, and unpack to"
    )
    OUTPUT_MAX_FILES: int = Field(20000, ge=1, description="most files an output may unpack to")
    DELIVERY_TIMEOUT: Seconds = Field(
        10.0, description="connect, association and per-file response timeout of a C-STORE"
    )
    DELIVERY_WORKERS: int = Field(
        4, ge=1, le=64, description="destinations served at once (one association each)"
    )
    DELIVERY_ASSOCIATIONS: int = Field(
        1, ge=1, le=8, description="associations in parallel to one destination, for one job"
    )
    DELIVERY_RETRY_DELAY: Seconds = Field(
        10.0, description="wait before a destination's second attempt; doubles, up to 600 s"
    )
    DELIVERY_MAX_ATTEMPTS: int = Field(
        30, ge=1, description="attempts per destination before its delivery fails (about 4 h)"
    )
    JOB_FILES_RETENTION_HOURS: float = Field(
        168.0, ge=0, description="how long failed jobs' files and non-DICOM outputs are kept"
    )

    # --- the HTTP side: health, metrics and the REST API ---
    HTTP_HOSTNAME: str = Field("127.0.0.1", description="address the HTTP side listens on")
    HTTP_PORT: int = Field(
        8124, ge=0, le=65535, description="TCP port of the HTTP side; 0: no HTTP side"
    )
    HTTP_TLS_CERT_FILE: str = Field(
        "", description="PEM certificate (chain) of the HTTP side; set with the key: HTTPS only"
    )
    HTTP_TLS_KEY_FILE: str = Field("", description="PEM private key of HTTP_TLS_CERT_FILE")
    API_TOKEN: str = Field(
        "",
        repr=False,
        description="bearer token of /metrics and /api/v1 (scripts, Prometheus); empty: "
        "API_TOKEN_FILE, or no access but /healthz and /readyz",
    )
    API_TOKEN_FILE: str = Field("", description="a file holding the bearer token, read at start")
    SENDERS_FILE: Path = Field(
        Path("CONFIGURATION/senders.json"),
        description='the AEs predictions may go back to (a fingerprint\'s {"sender": true}): '
        "AE title, host, port, TLS; read at each use",
    )
    SENDER_FALLBACK_PORT: int = Field(
        0, ge=0, le=65535,
        description="an AE not in SENDERS_FILE gets its predictions at its association's "
        "address on this port; 0: it gets none (its delivery fails, saying why)",
    )  # fmt: skip
    SERVERS_FILE: Path = Field(
        Path("CONFIGURATION/servers.json"),
        description="the named InferenceServers that serve pools (a fingerprint without "
        "inference_server_url): URL, API, models, capacity, weight, token; read again when "
        "it changes",
    )
    POOL_AFFINITY_MINUTES: float = Field(
        60.0, gt=0, le=7 * 24 * 60,
        description="how long a pool member keeps a study: its later jobs for the same model "
        "go to the same member while it is up and not drained",
    )  # fmt: skip
    SERVER_DOWN_AFTER: int = Field(
        3, ge=1, le=100,
        description="failed probes, or failed submits, in a row that take a pool member out "
        "until it answers a probe again (with HEARTBEAT_INTERVAL=0: until `isdr servers "
        "resume`)",
    )  # fmt: skip
    USERS_FILE: Path = Field(
        Path("CONFIGURATION/users.json"),
        description="the console's people: names, roles (viewer, operator) and password "
        "hashes, written by `isdr users add`; read again when it changes",
    )
    SESSION_HOURS: float = Field(
        12.0, gt=0, le=24 * 30, description="how long a console login lasts"
    )
    HEARTBEAT_INTERVAL: float = Field(
        60.0,
        ge=0,
        description="how often each InferenceServer of the fingerprints and of SERVERS_FILE "
        "is asked whether it answers (metrics, /api/v1/servers, pools' health); 0: never",
    )

    @model_validator(mode="after")
    def _one_api_token(self) -> Settings:
        if self.API_TOKEN and self.API_TOKEN_FILE:
            raise ValueError("give API_TOKEN or API_TOKEN_FILE, not both")
        if bool(self.HTTP_TLS_CERT_FILE) != bool(self.HTTP_TLS_KEY_FILE):
            raise ValueError("HTTP_TLS_CERT_FILE and HTTP_TLS_KEY_FILE go together: set both")
        if self.API_TOKEN and len(self.API_TOKEN) < MIN_TOKEN_LENGTH:
            raise ValueError(f"API_TOKEN must have at least {MIN_TOKEN_LENGTH} characters")
        return self

    def api_token(self) -> str:
        """The bearer token (API_TOKEN, or API_TOKEN_FILE's content); "" when none is set:
        then nothing but /healthz and /readyz is served."""
        if not self.API_TOKEN_FILE:
            return self.API_TOKEN
        try:
            token = Path(self.API_TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"API_TOKEN_FILE {self.API_TOKEN_FILE}: {exc.strerror}") from exc
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"API_TOKEN_FILE {self.API_TOKEN_FILE}: the token must have at least "
                f"{MIN_TOKEN_LENGTH} characters"
            )
        return token

    @field_validator(*ORIGINAL_BOOLEANS, mode="before")
    @classmethod
    def _empty_means_false(cls, value: object) -> object:
        return False if isinstance(value, str) and not value.strip() else value

    @field_validator("SCP_AE_TITLE")
    @classmethod
    def _dicom_ae_title(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be only spaces")
        if any(not " " <= character <= "~" or character == "\\" for character in value):
            raise ValueError("only printable ASCII characters, no backslash (DICOM's AE)")
        return value

    @field_validator("MAX_PDU_SIZE")
    @classmethod
    def _usable_pdu_size(cls, value: int) -> int:
        if 0 < value < MIN_PDU_SIZE:
            raise ValueError(f"must be 0 (unlimited) or at least {MIN_PDU_SIZE} bytes")
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a SQLAlchemy URL (like postgresql+psycopg://user@host/isdr or "
                "sqlite:////data/isdr.sqlite3)"
            ) from None
        return value

    @field_validator("ALLOWED_CALLING_AE_TITLES")
    @classmethod
    def _titles(cls, value: str) -> str:
        parse_titles(value)
        return value

    @field_validator("ALLOWED_PEERS")
    @classmethod
    def _peers(cls, value: str) -> str:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _gates_need_our_scp(self) -> Settings:
        gated = self.ALLOWED_CALLING_AE_TITLES or self.ALLOWED_PEERS or self.REQUIRE_CALLED_AE_TITLE
        if gated and self.RECEIVER == "dcmtk":
            raise ValueError(
                "ALLOWED_CALLING_AE_TITLES, ALLOWED_PEERS and REQUIRE_CALLED_AE_TITLE need "
                "RECEIVER=pynetdicom (dcmtk's storescp does not apply them)"
            )
        return self

    @model_validator(mode="after")
    def _tls_is_complete(self) -> Settings:
        if bool(self.SCP_TLS_CERT_FILE) != bool(self.SCP_TLS_KEY_FILE):
            raise ValueError("SCP_TLS_CERT_FILE and SCP_TLS_KEY_FILE go together: set both")
        if self.SCP_TLS_CLIENT_CA_FILE and not self.SCP_TLS_CERT_FILE:
            raise ValueError("SCP_TLS_CLIENT_CA_FILE needs SCP_TLS_CERT_FILE and SCP_TLS_KEY_FILE")
        if self.SCP_TLS_CERT_FILE and self.RECEIVER == "dcmtk":
            raise ValueError("SCP_TLS_CERT_FILE needs RECEIVER=pynetdicom")
        return self

    def scp_tls_context(self) -> ssl.SSLContext | None:
        """The Store SCP's TLS context (None: plain TCP); unusable files raise ConfigError."""
        if not self.SCP_TLS_CERT_FILE:
            return None
        client_ca = Path(self.SCP_TLS_CLIENT_CA_FILE) if self.SCP_TLS_CLIENT_CA_FILE else None
        try:
            return server_context(
                Path(self.SCP_TLS_CERT_FILE), Path(self.SCP_TLS_KEY_FILE), client_ca
            )
        except TlsFilesError as exc:
            raise ConfigError(f"SCP_TLS_CERT_FILE/KEY_FILE/CLIENT_CA_FILE: {exc}") from exc

    @property
    def access_policy(self) -> AccessPolicy:
        """Who may send, as the Store SCP applies it."""
        return AccessPolicy(
            parse_titles(self.ALLOWED_CALLING_AE_TITLES),
            parse_networks(self.ALLOWED_PEERS),
            self.SCP_AE_TITLE if self.REQUIRE_CALLED_AE_TITLE else None,
        )

    @field_validator("LOG_LEVEL")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("PYNETDICOM_LOG_LEVEL")
    @classmethod
    def _known_pynetdicom_level(cls, value: str) -> str:
        level = value.upper()
        if level not in (*LOG_LEVELS, "NONE", "STANDARD"):
            raise ValueError(f"must be none, standard or one of {', '.join(LOG_LEVELS)}")
        return level

    @property
    def database_url(self) -> str:
        """The effective database URL."""
        return self.DATABASE_URL or f"sqlite:///{self.DATA_DIR / 'isdr.sqlite3'}"

    @property
    def pynetdicom_level(self) -> int | Literal["NONE"]:
        """pynetdicom's log level as a number, or NONE to silence it."""
        if self.PYNETDICOM_LOG_LEVEL in ("NONE",):
            return "NONE"
        if self.PYNETDICOM_LOG_LEVEL == "STANDARD":
            return logging.INFO
        return logging.getLevelNamesMapping()[self.PYNETDICOM_LOG_LEVEL]


def load_settings() -> Settings:
    """Read the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if not name:  # a rule across several variables
            lines.append(message)
            continue
        shown = "(not shown)" if name in NOT_SHOWN else repr(error.get("input"))
        lines.append(f"{name}={shown}: {message}")
    return "invalid configuration: " + "; ".join(lines)


def describe_settings(settings: Settings) -> list[tuple[str, str]]:
    """(name, effective value) for every setting, for `isdr config`."""
    rows = [(name, str(getattr(settings, name))) for name in type(settings).model_fields]
    rows.append(("(effective database)", settings.database_url))
    return [(name, _shown(name, value)) for name, value in rows]


def _shown(name: str, value: str) -> str:
    if name == "API_TOKEN":
        return "***" if value else ""
    return _masked(value) if "database" in name.lower() else value


def _masked(url: str) -> str:
    """A database URL with its password replaced by ***."""
    if not url:
        return url
    return make_url(url).render_as_string(hide_password=True)
