"""The one place that builds the relay's parts from the configuration and runs them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from isdr.config import Settings
from isdr.daemons.deliver import Deliverer, DeliverSettings
from isdr.daemons.heartbeat import Heartbeat
from isdr.daemons.poll import Poller, PollSettings
from isdr.daemons.post import PostDaemon, PostSettings
from isdr.db.delivery import cancel, job_details, retry_failed
from isdr.db.engine import make_engine, reader_engine
from isdr.db.jobs import list_jobs, timeline
from isdr.db.pool import ServerStatus, set_drained, statuses
from isdr.db.series import discard_held, get_series, list_series, release_held
from isdr.domain.clock import utcnow
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.servers import Servers
from isdr.errors import ConfigError, IsdrError
from isdr.fingerprints.decide import ASSOCIATION_GRACE
from isdr.fingerprints.loader import load_folder
from isdr.fingerprints.registry import FingerprintRegistry
from isdr.fingerprints.report import check_lines, server_problems, test_lines
from isdr.fingerprints.senders import load_senders
from isdr.fingerprints.servers import ServersFile, load_servers
from isdr.inference.client import InferenceClient
from isdr.inference.unpack import Limits
from isdr.logs import configure_logging, route_thread_errors
from isdr.pictures.worker import Renderer
from isdr.preflight import check_online
from isdr.scp.admission import ConnectionLimits
from isdr.scp.dcmtk import SPOOL_NAME, DcmtkReceiver
from isdr.scp.inbox import Inbox
from isdr.scp.ingest import Ingestor
from isdr.scp.listen import check_can_listen
from isdr.scp.server import ReceiveLimits, StoreSCP
from isdr.scp.storage import AtomicWriter, remove_stale_temporaries, staging_folder
from isdr.scp.tuning import tune_libraries
from isdr.scu.echo import EchoAnswer, echo
from isdr.tls import self_check_context
from isdr.web.app import create_app
from isdr.web.context import Live, WebContext
from isdr.web.pictures import keep_job_picture, keep_series_picture
from isdr.web.server import WebServer
from isdr.web.users import Role, Users, read_users, remove_user, set_user

__all__ = [  # what the commands use, besides serve
    "Engine",
    "Role",
    "ServerStatus",
    "cancel",
    "discard_held",
    "get_series",
    "job_details",
    "list_jobs",
    "list_series",
    "load_servers",
    "read_users",
    "release_held",
    "remove_user",
    "retry_failed",
    "set_drained",
    "set_user",
    "statuses",
    "timeline",
]  # fmt: skip

logger = logging.getLogger(__name__)

STOP_MARGIN = 1.5  # on top of STOP_TIMEOUT, for aborting associations and closing up
OWNER_ONLY = 0o077  # umask: no permission for group or others
ONLINE_TIMEOUT = 10.0  # seconds a server may take to answer `fingerprints check --online`
DELIVERY_TICK = 1.0  # seconds between looks for due deliveries and finished jobs
PRUNE_INTERVAL = 600.0  # seconds between prunes of the console's cached pictures


class Receiver(Protocol):
    """What receives C-STOREs: our own Store SCP, or dcmtk's storescp."""

    @property
    def port(self) -> int: ...

    @property
    def listening(self) -> bool: ...

    def associations(self) -> int: ...
    def start(self) -> None: ...
    def stop(self, timeout: float) -> None: ...


@dataclass
class Relay:
    """The running parts of the relay."""

    settings: Settings
    engine: Engine
    writer: AtomicWriter
    scp: Receiver
    inbox: Inbox
    watch: bool
    registry: FingerprintRegistry
    post: PostDaemon
    poller: Poller
    deliverer: Deliverer
    client: InferenceClient
    scheduler: BackgroundScheduler = field(default_factory=BackgroundScheduler)
    web: WebServer | None = None  # the HTTP side; None with HTTP_PORT=0
    heartbeat: Heartbeat | None = None  # asks the InferenceServers whether they answer
    pictures: Renderer | None = None  # the console's pictures, made off the receive path
    servers: ServersFile | None = None  # SERVERS_FILE: the pools' members

    def start(self) -> None:
        """Reconcile what a previous run left, then start receiving.

        Reconciliation always runs: a crash between a rename and its database commit
        leaves a complete file that only it records. The HTTP side starts first: if it
        cannot, nothing else has started.
        """
        if self.web is not None:
            self.web.start()
        for folder in (self.settings.INCOMING_DIR, self.writer.staging):
            if folder is not None:
                remove_stale_temporaries(folder)
        if self.watch:
            self.inbox.start()  # first: files placed during reconciliation are not missed
        self.inbox.reconcile()
        self.registry.start()
        self.post.recover()
        self.post.start_waking()
        self.deliverer.recover()
        ticks = (
            ("route_tick", self.post.route_tick, self.settings.POST_INTERVAL),
            ("submit_tick", self.post.submit_tick, self.settings.POST_INTERVAL),
            ("delivery_tick", self.deliverer.tick, DELIVERY_TICK),
        )
        for name, tick, seconds in ticks:
            self.scheduler.add_job(
                tick, "interval", seconds=seconds, max_instances=1, coalesce=True, id=name
            )
        if self.pictures is not None:
            self.scheduler.add_job(
                self.pictures.prune, "interval", seconds=PRUNE_INTERVAL, id="prune_pictures",
                kwargs={"max_age": self.settings.JOB_FILES_RETENTION_HOURS * 3600},
            )  # fmt: skip
        if self.heartbeat is not None:  # at once, then every HEARTBEAT_INTERVAL
            self.scheduler.add_job(
                self.heartbeat.tick, "interval", seconds=self.settings.HEARTBEAT_INTERVAL,
                max_instances=1, coalesce=True, id="heartbeat", next_run_time=utcnow(),
            )  # fmt: skip
        self.post.on_new_jobs = lambda: self.run_now("submit_tick")
        self.post.on_submitted = self.poller.wake
        self.poller.on_output = lambda: self.run_now("delivery_tick")
        self.scheduler.start()
        self.poller.start()
        self.scp.start()

    def run_now(self, tick: str) -> None:
        """Run a tick now rather than at its next interval: work was handed over."""
        with contextlib.suppress(JobLookupError):
            self.scheduler.modify_job(tick, next_run_time=utcnow())

    def stop(self) -> bool:
        """Stop receiving (C-STOREs in flight finish), then the daemons.

        Returns False when a submit was still on the wire: it is left to the process's
        exit, and its job is failed as interrupted at the next start (never sent twice).
        """
        deadline = time.monotonic() + self.settings.STOP_TIMEOUT + STOP_MARGIN
        if self.web is not None:
            self.web.stop()
        self.post.stopping.set()
        self.poller.stop()
        self.deliverer.stop()
        self.scp.stop(self.settings.STOP_TIMEOUT)
        self.scheduler.shutdown(wait=False)
        idle = all(
            part.idle(max(0.0, deadline - time.monotonic()))
            for part in (self.post, self.poller, self.deliverer)
        )
        if idle:
            self.client.close()
        else:
            logger.warning(
                "a submit, poll or C-STORE is still on the wire: left to the process's exit "
                "(a submit's job shows as interrupted; polls and deliveries resume at the "
                "next start)"
            )
        self.registry.stop()
        self.inbox.stop()
        self.engine.dispose()
        logger.info("relay stopped")
        return idle


def build_relay(settings: Settings) -> Relay:
    """Create folders, the database and the receiving side from the settings."""
    tune_libraries(pynetdicom_logging=settings.pynetdicom_level != "NONE")
    route_thread_errors()
    make_folder("INCOMING_DIR", settings.INCOMING_DIR)
    make_folder("DATA_DIR", settings.DATA_DIR)
    engine = make_engine(settings.database_url, durable=settings.FSYNC_WRITES)
    writer = AtomicWriter(
        settings.INCOMING_DIR,
        fsync=settings.FSYNC_WRITES,
        min_free_bytes=int(settings.MIN_FREE_DISK_MB * 2**20),
        staging=staging_folder(settings.INCOMING_DIR),
    )
    ingestor = Ingestor(settings.INCOMING_DIR, writer, engine)
    registry = FingerprintRegistry(settings.FINGERPRINT_DIR)
    client = InferenceClient(
        settings.CERT_FILE, settings.POST_TIMEOUT, settings.TRANSFER_MIN_RATE_KB * 1000
    )
    servers = ServersFile(settings.SERVERS_FILE)
    post = PostDaemon(
        engine, registry.current, client, _post_settings(settings), utcnow, ingestor.tree_lock,
        servers.current,
    )  # fmt: skip
    poller = Poller(engine, client, _poll_settings(settings), utcnow)
    deliverer = Deliverer(engine, client, _deliver_settings(settings), utcnow)
    scp: Receiver
    if settings.RECEIVER == "dcmtk":
        spool = settings.INCOMING_DIR / SPOOL_NAME
        scp, inbox = DcmtkReceiver(spool, **_scp_options(settings)), Inbox(ingestor, engine, spool)
    else:
        scp = StoreSCP(
            ingestor,
            policy=settings.access_policy,
            tls=settings.scp_tls_context(),
            limits=_receive_limits(settings),
            **_scp_options(settings),
        )
        inbox = Inbox(ingestor, engine)
    # storescp's files reach the database only through the watcher: it always watches.
    watch = settings.WATCH_INCOMING or settings.RECEIVER == "dcmtk"
    # A round may be complete at the end of its association: routed then, not at the tick.
    ingestor.on_association_released = lambda: post.route_soon(ASSOCIATION_GRACE + 0.05)
    relay = Relay(
        settings, engine, writer, scp, inbox, watch, registry, post, poller, deliverer, client
    )
    relay.servers = servers
    if settings.HTTP_PORT:
        relay.pictures = Renderer(settings.DATA_DIR / "pictures")
        relay.web = _web_server(settings, relay)
    if settings.HEARTBEAT_INTERVAL:
        relay.heartbeat = Heartbeat(
            engine, registry.current, client, utcnow, servers.current, settings.SERVER_DOWN_AFTER
        )
    return relay


def _web_server(settings: Settings, relay: Relay) -> WebServer:
    """The HTTP side, given the database and what only the running relay knows."""
    _check_tls_files(settings)
    reader = reader_engine(settings.database_url)
    context = WebContext(
        engine=relay.engine,
        reader=reader,
        token=settings.api_token(),
        checks={
            "database": lambda: _database_answers(reader),
            "receiver": lambda: None if relay.scp.listening else "the Store SCP is not listening",
            "disk": lambda: _disk_reserve(relay.writer, settings.MIN_FREE_DISK_MB),
        },
        live=Live(
            free_bytes=lambda: shutil.disk_usage(settings.INCOMING_DIR).free,
            associations=relay.scp.associations,
        ),
        clock=utcnow,
        users=Users(settings.USERS_FILE),
        incoming_dir=settings.INCOMING_DIR,
        jobs_dir=settings.DATA_DIR / "jobs",
        pictures=relay.pictures,
        servers=relay.servers.current if relay.servers is not None else Servers,
        session_hours=settings.SESSION_HOURS,
        secure_cookies=bool(settings.HTTP_TLS_CERT_FILE),
    )
    relay.post.before_removal = lambda series_id: keep_series_picture(context, series_id)
    relay.deliverer.before_output_removal = lambda job_id: keep_job_picture(context, job_id)
    return WebServer(
        create_app(
            context, settings.FINGERPRINT_DIR, relay.registry.current, settings.SCP_AE_TITLE
        ),
        settings.HTTP_HOSTNAME, settings.HTTP_PORT,
        settings.HTTP_TLS_CERT_FILE, settings.HTTP_TLS_KEY_FILE,
        on_stop=relay.pictures.close if relay.pictures else None,
    )  # fmt: skip


def _check_tls_files(settings: Settings) -> None:
    """HTTPS files that load, or ConfigError naming them, before anything starts."""
    if not settings.HTTP_TLS_CERT_FILE:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.HTTP_TLS_CERT_FILE, settings.HTTP_TLS_KEY_FILE
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"HTTP_TLS_CERT_FILE={settings.HTTP_TLS_CERT_FILE} / HTTP_TLS_KEY_FILE: cannot "
            f"load them: {exc.strerror or exc}"
        ) from exc


def _database_answers(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 (a readiness check: any failure is "not ready")
        return f"the database does not answer ({type(exc).__name__})"
    return None


def _disk_reserve(writer: AtomicWriter, reserve_mb: float) -> str | None:
    if writer.room() > 0:
        return None
    return (
        f"INCOMING_DIR's disk is at its reserve (MIN_FREE_DISK_MB={reserve_mb:g}): "
        "C-STOREs get 0xA700"
    )


def make_folder(variable: str, folder: Path) -> None:
    """Create one of the folders the relay writes to; IsdrError, in one line, if it cannot
    (a path from the original relay, such as /INCOMING, is not writable in the image)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {variable}={folder} ({exc.strerror or exc}): it must be a folder "
            f"the relay's user (uid {os.getuid()}) may write to"
        ) from exc


def _post_settings(settings: Settings) -> PostSettings:
    return PostSettings(
        incoming_dir=settings.INCOMING_DIR,
        jobs_dir=settings.DATA_DIR / "jobs",
        post_after=settings.POST_AFTER,
        delete_on_post=settings.DELETE_ON_POST,
        max_attempts=settings.POST_MAX_ATTEMPTS,
        retry_delay=settings.POST_RETRY_DELAY,
        ambiguous_resends=settings.POST_AMBIGUOUS_RESENDS,
        affinity=settings.POOL_AFFINITY_MINUTES * 60,
        down_after=settings.SERVER_DOWN_AFTER,
    )


def _poll_settings(settings: Settings) -> PollSettings:
    return PollSettings(
        jobs_dir=settings.DATA_DIR / "jobs",
        interval=settings.GET_INTERVAL,
        timeout=settings.GET_TIMEOUT,
        workers=settings.GET_WORKERS,
        per_server=settings.GET_WORKERS_PER_SERVER,
        limits=Limits(int(settings.OUTPUT_MAX_MB * 2**20), settings.OUTPUT_MAX_FILES),
        delete_remotely=settings.ASK_INFERENCE_SERVER_TO_DELETE_TASK,
    )


def _deliver_settings(settings: Settings) -> DeliverSettings:
    return DeliverSettings(
        jobs_dir=settings.DATA_DIR / "jobs",
        calling_ae_title=settings.SCP_AE_TITLE,
        timeout=settings.DELIVERY_TIMEOUT,
        workers=settings.DELIVERY_WORKERS,
        associations=settings.DELIVERY_ASSOCIATIONS,
        retry_delay=settings.DELIVERY_RETRY_DELAY,
        max_attempts=settings.DELIVERY_MAX_ATTEMPTS,
        retention=settings.JOB_FILES_RETENTION_HOURS * 3600.0,
        delete_remotely=settings.ASK_INFERENCE_SERVER_TO_DELETE_TASK,
        senders=lambda: load_senders(settings.SENDERS_FILE),
        sender_fallback_port=settings.SENDER_FALLBACK_PORT,
    )


def _receive_limits(settings: Settings) -> ReceiveLimits:
    return ReceiveLimits(
        associate_timeout=settings.SCP_ASSOCIATE_TIMEOUT,
        network_timeout=settings.SCP_NETWORK_TIMEOUT,
        connections=ConnectionLimits(
            total=settings.SCP_MAX_CONNECTIONS,
            per_peer=settings.SCP_MAX_CONNECTIONS_PER_PEER,
            associations=settings.SCP_MAX_ASSOCIATIONS,
        ),
        max_instance_bytes=int(settings.MAX_INSTANCE_MB * 2**20),
    )


def _scp_options(settings: Settings) -> dict[str, Any]:
    return {
        "ae_title": settings.SCP_AE_TITLE,
        "host": settings.SCP_HOSTNAME,
        "port": settings.SCP_PORT,
        "max_pdu": settings.MAX_PDU_SIZE,
    }


def serve(settings: Settings) -> None:
    """Run the relay until SIGTERM or SIGINT.

    Everything it creates (received instances, the database, job files) is readable by
    its own user only: the files hold patient data.
    """
    configure_logging(settings)
    os.umask(OWNER_ONLY)
    if not settings.CERT_FILE.is_file():
        logger.warning(
            "CERT_FILE %s does not exist: InferenceServers will be verified against the "
            "system's CA certificates only",
            settings.CERT_FILE,
        )
    relay = build_relay(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with single_instance(settings.DATA_DIR):
        check_can_listen(_listen_host(settings), settings.SCP_PORT)  # one clear line if not
        if settings.HTTP_PORT:
            check_can_listen(settings.HTTP_HOSTNAME, settings.HTTP_PORT, "HTTP")
        relay.start()
        logger.info("relay running; stop it with SIGTERM or Ctrl-C")
        stop.wait()
        idle = relay.stop()
    if not idle:
        logging.shutdown()
        os._exit(0)  # do not wait for the submit's thread: the stop must stay within 10 s


def _listen_host(settings: Settings) -> str:
    """Where the receiver binds: dcmtk's storescp on every address, whatever SCP_HOSTNAME."""
    return "" if settings.RECEIVER == "dcmtk" else settings.SCP_HOSTNAME


@contextlib.contextmanager
def single_instance(data_dir: Path) -> Iterator[None]:
    """Refuse to run twice on one DATA_DIR: two relays would take the same jobs."""
    with (data_dir / "isdr.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IsdrError(f"another relay is running with DATA_DIR={data_dir}") from exc
        yield


# --- what the other commands ask of a relay's records and configuration ---


def open_database(settings: Settings, cwd: Path | None = None) -> Engine:
    """The relay's database, for the commands that read it (`isdr jobs`, `series`).

    A command run in another folder must not make itself a new, empty database: when the
    SQLite file is not where the relay would have it, IsdrError says where it looked.
    """
    missing = missing_database(settings, cwd or Path.cwd())
    if missing is not None:
        raise IsdrError(missing)
    return make_engine(settings.database_url)


def missing_database(settings: Settings, cwd: Path) -> str | None:
    """Where the relay's SQLite file was looked for and why there, if it is not there."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = cwd / str(url.database)  # an absolute database path stays as it is
    if path.is_file():
        return None
    variable = "DATABASE_URL" if settings.DATABASE_URL else "DATA_DIR"
    value = str(url.database) if settings.DATABASE_URL else str(settings.DATA_DIR)
    relative = (
        "" if Path(str(url.database)).is_absolute() else f", relative to the current folder {cwd}"
    )
    return (
        f"no relay database at {path} ({variable}={value}{relative}): run this in the "
        f"relay's folder or set {variable}"
    )


def check_fingerprints(
    folder: Path,
    online: Settings | None = None,
    senders_file: Path | None = None,
    servers_file: Path | None = None,
) -> tuple[list[str], bool]:
    """`isdr fingerprints check` (`--online` with the settings): a line per file (and per
    server and destination reached), SENDERS_FILE's when a fingerprint sends back to the
    sender, SERVERS_FILE's when a pool serves one, and whether all is well."""
    loaded = load_folder(folder)
    lines = check_lines(folder, loaded)
    if senders_file is not None and any(f.to_sender for f in loaded.fingerprints.values()):
        lines.append(_senders_line(senders_file))
    servers = Servers()
    if servers_file is not None and any(f.pooled for f in loaded.fingerprints.values()):
        servers, more = _servers_lines(servers_file, loaded.fingerprints)
        lines += more
    ok = not any(line.startswith("ERROR") for line in lines)
    if online is None:
        return lines, ok
    client = InferenceClient(
        online.CERT_FILE,
        min(online.POST_TIMEOUT, ONLINE_TIMEOUT),
        online.TRANSFER_MIN_RATE_KB * 1000,
    )
    try:
        findings = check_online(loaded.fingerprints, client, online.SCP_AE_TITLE, servers)
    finally:
        client.close()
    return lines + [f.line() for f in findings], ok and all(f.ok for f in findings)


def _senders_line(path: Path) -> str:
    if not path.is_file():
        return (
            f"WARN   SENDERS_FILE {path} does not exist: no sender is known, so predictions "
            "go back only with SENDER_FALLBACK_PORT"
        )
    try:
        known = load_senders(path)
    except ConfigError as exc:
        return f"ERROR  SENDERS_FILE {exc}"
    return f"OK     SENDERS_FILE {path}: {len(known.senders)} sender(s) predictions may go back to"


def _servers_lines(
    path: Path, fingerprints: Mapping[str, Fingerprint]
) -> tuple[Servers, list[str]]:
    """SERVERS_FILE's line, and one per problem of a pool fingerprint's pool."""
    if not path.is_file():
        head = f"ERROR  SERVERS_FILE {path} does not exist: no pool has a member"
        return Servers(), [head] + [
            f"ERROR  {name}: no server serves its model: its jobs wait"
            for name, fingerprint in sorted(fingerprints.items())
            if fingerprint.pooled
        ]
    try:
        servers = load_servers(path)
    except ConfigError as exc:
        return Servers(), [f"ERROR  SERVERS_FILE {exc}"]
    lines = [f"OK     SERVERS_FILE {path}: {len(servers.servers)} server(s)"]
    lines += [
        f"ERROR  SERVERS_FILE: {text}" for s in servers.servers for text in server_problems(s)
    ]
    for name, fingerprint in sorted(fingerprints.items()):
        problems = servers.problems(fingerprint)
        empty = fingerprint.pooled and not servers.pool(
            fingerprint.model_human_readable_id, fingerprint.inference_servers
        )
        level = "ERROR" if empty else "WARN "
        lines += [f"{level}  {name}: {problem}" for problem in problems]
    return servers, lines


def test_fingerprints(path: Path, folder: Path) -> list[str]:
    """`isdr fingerprints test`: the folder's errors, then per series what matches."""
    loaded = load_folder(folder)
    return [f"ERROR  {error}" for error in loaded.errors] + test_lines(path, loaded.fingerprints)


def echo_relay(settings: Settings) -> EchoAnswer:
    """`isdr echo`: C-ECHO the relay's own Store SCP (over TLS when it speaks TLS)."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL + 1)  # the answer says it all
    tls = None
    if settings.SCP_TLS_CERT_FILE:
        tls = self_check_context(Path(settings.SCP_TLS_CERT_FILE), Path(settings.SCP_TLS_KEY_FILE))
    return echo(settings.SCP_HOSTNAME, settings.SCP_PORT, settings.SCP_AE_TITLE, tls=tls)


def run_demo(out: TextIO) -> int:
    """`isdr demo`; it needs the `demo` extra (the stand-in's certificates)."""
    with _demo_extra("demo"):
        from isdr.demo.run import run_demo as demo
    return demo(out)


def run_standin(out: TextIO, destination: Path | None, port_v1: int, port_v2: int) -> int:
    """`isdr standin`: the stand-in InferenceServer (and a destination) until stopped."""
    with _demo_extra("standin"):
        from isdr.demo.serve_standin import serve_standin
    return serve_standin(out, destination=destination, port_v1=port_v1, port_v2=port_v2)


@contextlib.contextmanager
def _demo_extra(command: str) -> Iterator[None]:
    """Name the missing extra instead of a traceback when trustme is not installed."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name != "trustme":
            raise
        raise IsdrError(
            f"isdr {command} needs the demo extra ({exc.name} is missing): "
            "pip install -c constraints.txt 'isdr[demo]' (or '.[demo]' in a checkout)"
        ) from exc
