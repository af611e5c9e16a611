"""/metrics in Prometheus' text format, computed from the database at each scrape.

Counts come from the rows (every instance ever recorded, every job by state, every
failure in the jobs' timelines), not from counters in this process: they stay right across
restarts, and when several relays share one database each reports the same totals. The
database is read through the HTTP side's own engine, which takes no write lock. Only
`isdr_associations_active` and `isdr_storage_free_bytes` are this process's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from isdr.db.models import Instance, Job, JobEvent, Series, ServerCheck
from isdr.db.overview import counts_by_state
from isdr.domain.states import JobState, SeriesState
from isdr.web.context import Live

# Seconds: from a minute to a day, for stages that take from seconds (a submit) to hours
# (a queue on the server).
BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
STAGES = ("waiting", "submit", "on the server", "delivery")


class RelayCollector(Collector):
    """Reads the metrics from the database when Prometheus scrapes."""

    def __init__(self, engine: Engine, live: Live) -> None:
        self.engine = engine
        self.live = live

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from _received(session)
            yield _by_state(session, "isdr_series", "series rounds by state",
                            Series.state, [s.value for s in SeriesState])  # fmt: skip
            yield _by_state(session, "isdr_jobs", "jobs by state",
                            Job.state, [s.value for s in JobState])  # fmt: skip
            yield _failed(session)
            yield _servers_up(session)
            yield _stage_seconds(session)
        free = "free bytes on INCOMING_DIR's file system"
        yield from _gauge("isdr_storage_free_bytes", free, self.live.free_bytes)
        associations = "associations open in this relay's Store SCP"
        yield from _gauge("isdr_associations_active", associations, self.live.associations)


def _gauge(name: str, documentation: str, read: Callable[[], int]) -> Iterator[Metric]:
    """A gauge of this process; left out of the scrape (not an error) when it cannot be read."""
    try:
        value = read()
    except OSError:
        return
    yield GaugeMetricFamily(name, documentation, value=value)


def _failed(session: Session) -> CounterMetricFamily:
    """Every time a job failed (its timeline's lines): a counter that never goes down,
    whatever retries do, for an alert on a job that did not deliver."""
    count = session.scalar(
        select(func.count()).select_from(JobEvent).where(JobEvent.state == JobState.FAILED)
    )
    return CounterMetricFamily(
        "isdr_jobs_failed", "times a job failed (a retried job that fails again counts again)",
        value=count or 0,
    )  # fmt: skip


def _servers_up(session: Session) -> GaugeMetricFamily:
    """1 for each InferenceServer whose last heartbeat it answered as its generation does."""
    gauge = GaugeMetricFamily(
        "isdr_inference_server_up", "whether the InferenceServer answered its last heartbeat",
        labels=["server", "api"],
    )  # fmt: skip
    for row in session.scalars(select(ServerCheck).order_by(ServerCheck.url)):
        gauge.add_metric([row.url, str(row.api)], 1.0 if row.up else 0.0)
    return gauge


def render(engine: Engine, live: Live) -> bytes:
    """The text Prometheus scrapes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(engine, live))
    return generate_latest(registry)


def _received(session: Session) -> Iterable[Metric]:
    instances = CounterMetricFamily(
        "isdr_instances_received", "instances recorded, by the sender's calling AE title",
        labels=["calling_ae"],
    )  # fmt: skip
    received_bytes = CounterMetricFamily(
        "isdr_bytes_received", "bytes of the instances recorded", labels=["calling_ae"]
    )
    rows = session.execute(
        select(Series.calling_ae_title, func.count(Instance.id), func.sum(Instance.size))
        .join(Series, Series.id == Instance.series_id)
        .group_by(Series.calling_ae_title)
    )
    for calling_ae, count, size in rows:
        instances.add_metric([calling_ae or ""], count)
        received_bytes.add_metric([calling_ae or ""], size or 0)
    return instances, received_bytes


def _by_state(
    session: Session,
    name: str,
    documentation: str,
    column: InstrumentedAttribute[str],
    states: list[str],
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    # every state, 0 included: an alert needs the series to exist
    for state, count in counts_by_state(session, column, states).items():
        gauge.add_metric([state], count)
    return gauge


def _stage_seconds(session: Session) -> HistogramMetricFamily:
    """How long delivered jobs spent in each stage, from their timelines: waiting (created
    to its last submit), submit (that submit to accepted), on the server (accepted to the
    output unpacked) and delivery (to delivered). Only delivered jobs count: their
    timelines no longer change, so the histogram only grows."""
    firsts: dict[int, dict[str, datetime]] = {}
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.state, func.min(JobEvent.at), func.max(JobEvent.at))
        .join(Job, Job.id == JobEvent.job_id)
        .where(Job.state == JobState.DELIVERED)
        .group_by(JobEvent.job_id, JobEvent.state)
    )
    for job_id, state, first, last in rows:
        marks = firsts.setdefault(job_id, {})
        marks[state] = last if state == JobState.SUBMITTING else first
    histogram = HistogramMetricFamily(
        "isdr_job_stage_seconds", "seconds jobs spent in each stage", labels=["stage"]
    )
    for stage, (start, end) in zip(STAGES, _STAGE_BOUNDS, strict=True):
        durations = [
            (marks[end] - marks[start]).total_seconds()
            for marks in firsts.values()
            if start in marks and end in marks and marks[end] >= marks[start]
        ]
        histogram.add_metric([stage], _buckets(durations), sum(durations))
    return histogram


_STAGE_BOUNDS = (
    (JobState.PENDING, JobState.SUBMITTING),
    (JobState.SUBMITTING, JobState.SUBMITTED),
    (JobState.SUBMITTED, JobState.DELIVERING),
    (JobState.DELIVERING, JobState.DELIVERED),
)


def _buckets(durations: list[float]) -> list[tuple[str, float]]:
    cumulative = [
        (f"{bound:g}", float(sum(1 for d in durations if d <= bound))) for bound in BUCKETS
    ]
    return [*cumulative, ("+Inf", float(len(durations)))]
