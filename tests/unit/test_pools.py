"""Pools of InferenceServers: the pure choice of a member, the servers file, pool
fingerprints, and the pools' state in the database."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from isdr.db import pool
from isdr.db.engine import make_engine
from isdr.db.models import Job, Series
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.servers import Chosen, PoolMember, Server, Servers, Wait, choose
from isdr.fingerprints.loader import FingerprintError
from isdr.fingerprints.servers import ServersFile, load_servers, parse_servers

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DOWN_AFTER = 3


def member(name: str, capacity: int = 4, weight: float = 1.0, **state: Any) -> PoolMember:
    return PoolMember(name, capacity, weight, **state)


def server(name: str, models: tuple[str, ...] = ("m",), **more: Any) -> Server:
    return Server.model_validate(
        {"name": name, "url": f"http://{name}:8000", "models": list(models), **more}
    )


def chosen_name(choice: Chosen | Wait) -> str:
    assert isinstance(choice, Chosen), choice
    return choice.name


def wait_reason(choice: Chosen | Wait) -> str:
    assert isinstance(choice, Wait), choice
    return choice.reason


# choose(): the member that takes a job


def test_the_least_loaded_for_its_weight_is_chosen() -> None:
    members = [member("a", in_flight=2), member("b", in_flight=3, weight=2.0)]  # 2.0 vs 1.5
    assert chosen_name(choose(members)) == "b"


def test_a_tie_in_load_goes_to_the_fewest_taken_lately_for_its_weight() -> None:
    members = [member("a", recent=3), member("b", recent=4, weight=2.0)]  # 3.0 vs 2.0
    assert chosen_name(choose(members)) == "b"


def test_a_full_tie_goes_to_the_first_name() -> None:
    assert chosen_name(choose([member("b"), member("a")])) == "a"


def test_a_full_member_is_skipped_however_light_its_weight_makes_it() -> None:
    members = [member("a", capacity=2, in_flight=2, weight=100.0), member("b", in_flight=3)]
    assert chosen_name(choose(members)) == "b"


def test_the_reason_of_a_choice_tells_the_load() -> None:
    choice = choose([member("a", in_flight=1)])
    assert isinstance(choice, Chosen)
    assert "fewest jobs lately" in choice.reason and "1 of 4" in choice.reason


def test_when_every_member_is_full_the_job_waits_saying_so() -> None:
    reason = wait_reason(choose([member("a", in_flight=4), member("b", capacity=2, in_flight=5)]))
    assert "full" in reason
    assert "a (4 of 4)" in reason and "b (5 of 2)" in reason


def test_a_full_pool_with_one_down_member_is_full_not_down() -> None:
    reason = wait_reason(choose([member("a", in_flight=4), member("b", down=True)]))
    assert "is full" in reason and "b (down)" in reason


def test_when_every_member_is_down_or_drained_the_job_waits_saying_so() -> None:
    members = [
        member("a", down=True),
        member("b", drained=True),
        member("c", down=True, drained=True),
    ]
    reason = wait_reason(choose(members))
    assert "down or drained" in reason
    assert "a (down)" in reason and "b (drained)" in reason and "c (down, drained)" in reason


def test_an_empty_pool_makes_the_job_wait() -> None:
    assert "no server" in wait_reason(choose([]))


def test_the_member_holding_the_study_takes_its_next_job() -> None:
    members = [member("a"), member("b", in_flight=3)]
    choice = choose(members, affinity="b")
    assert isinstance(choice, Chosen)
    assert choice.name == "b" and "study" in choice.reason


def test_a_full_member_holding_the_study_makes_the_job_wait_for_it() -> None:
    members = [member("a"), member("b", in_flight=4)]
    reason = wait_reason(choose(members, affinity="b"))
    assert "waiting for b" in reason and "4 of 4" in reason


@pytest.mark.parametrize("state", [{"down": True}, {"drained": True}])
def test_a_member_holding_the_study_but_out_of_the_pool_is_passed_over(
    state: dict[str, bool],
) -> None:
    members = [member("a", in_flight=3), member("b", **state)]
    assert chosen_name(choose(members, affinity="b")) == "a"


def test_an_affinity_to_a_member_not_in_the_pool_is_ignored() -> None:
    assert chosen_name(choose([member("a")], affinity="gone")) == "a"


def test_the_member_that_just_failed_the_job_is_avoided_when_another_is_free() -> None:
    members = [member("a"), member("b", in_flight=3)]
    assert chosen_name(choose(members, avoid="a")) == "b"


def test_the_member_that_just_failed_the_job_is_still_chosen_when_alone_free() -> None:
    members = [member("a"), member("b", in_flight=4), member("c", down=True)]
    assert chosen_name(choose(members, avoid="a")) == "a"


def test_shares_follow_the_weights() -> None:
    members = {"a": member("a", 10_000, 2.0), "b": member("b", 10_000, 1.0)}
    for _ in range(300):
        name = chosen_name(choose(list(members.values())))
        members[name] = dataclasses.replace(members[name], recent=members[name].recent + 1)
    assert abs(members["a"].recent - 200) <= 2
    assert abs(members["b"].recent - 100) <= 2


# Servers: the file's model


def test_a_name_may_appear_once_whatever_its_case() -> None:
    with pytest.raises(ValidationError, match="gpu-a"):
        Servers(servers=[server("gpu-a"), server("GPU-A")])


def test_a_server_with_two_token_sources_is_refused() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        server("a", token="secret", token_env="TOKEN")


def test_a_pool_holds_the_servers_of_the_model_narrowed_to_the_names_given() -> None:
    servers = Servers(servers=[server("a"), server("b", ("m", "n")), server("c", ("n",))])
    assert [s.name for s in servers.pool("m")] == ["a", "b"]
    assert [s.name for s in servers.pool("n")] == ["b", "c"]
    assert [s.name for s in servers.pool("m", ["b", "c"])] == ["b"]
    assert servers.pool("x") == []


def test_problems_name_unknown_servers_and_servers_without_the_model() -> None:
    servers = Servers(servers=[server("a"), server("b", ("n",))])
    fingerprint = Fingerprint.model_validate(
        {"model_human_readable_id": "m", "inference_servers": ["a", "b", "zz"]}
    )
    problems = servers.problems(fingerprint)
    assert len(problems) == 2
    assert any("'zz'" in p and "does not" in p for p in problems)
    assert any("'b'" in p and "does not list the model 'm'" in p for p in problems)


def test_problems_say_when_the_pool_is_empty() -> None:
    fingerprint = Fingerprint.model_validate({"model_human_readable_id": "nobody"})
    [problem] = Servers(servers=[server("a")]).problems(fingerprint)
    assert "no server" in problem and "'nobody'" in problem


def test_a_fingerprint_with_a_url_has_no_pool_problem() -> None:
    fingerprint = Fingerprint.model_validate(
        {"model_human_readable_id": "nobody", "inference_server_url": "http://x:1"}
    )
    assert Servers().problems(fingerprint) == []


# SERVERS_FILE: parsing and loading

GOOD = '{"servers": [{"name": "a", "url": "http://a:8000", "models": ["m"]}]}'


def errors_of(text: str) -> list[FingerprintError]:
    result = parse_servers("servers.json", text)
    assert isinstance(result, list), result
    return result


def test_a_good_file_parses() -> None:
    result = parse_servers("servers.json", GOOD)
    assert isinstance(result, Servers)
    assert [s.name for s in result.servers] == ["a"]


def test_a_typo_in_a_key_names_its_line_and_the_key_meant() -> None:
    text = '{"servers": [\n  {"name": "a", "url": "http://a:8000", "models": ["m"],\n'
    text += '   "capacty": 3}\n]}'
    [error] = errors_of(text)
    assert str(error).startswith("servers.json:3:")
    assert "did you mean 'capacity'" in str(error)


def test_invalid_json_names_its_line_and_column() -> None:
    [error] = errors_of('{"servers": [\n  {"name": "a",}\n]}')
    assert (error.line, error.column) == (2, 16)
    assert "servers.json:2:16" in str(error) and "invalid JSON" in str(error)


def test_an_invalid_value_names_the_line_of_its_own_server() -> None:
    text = "\n".join(
        [
            '{"servers": [',
            '  {"name": "a", "url": "http://a:1", "models": ["m"]},',
            '  {"name": "b", "url": "http://b:1", "models": ["m"], "capacity": 0},',
            '  {"name": "c", "url": "http://c:1", "models": ["m"], "capacity": 4}',
            "]}",
        ]
    )
    [error] = errors_of(text)
    assert error.field == "servers.1.capacity"
    assert error.line == 3


def test_a_missing_file_is_no_server(tmp_path: Path) -> None:
    assert load_servers(tmp_path / "absent.json") == Servers()
    assert load_servers(tmp_path / "absent.json").servers == []


def test_the_last_good_version_stays_when_the_file_breaks(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(GOOD)
    watched = ServersFile(path)
    good = watched.current()
    assert [s.name for s in good.servers] == ["a"]
    path.write_text(GOOD.replace('"models"', '"modles"') + "\n")  # another size
    assert watched.current() == good


def test_a_fixed_file_is_taken_again(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text("{")
    watched = ServersFile(path)
    assert watched.current() == Servers()
    path.write_text(GOOD)
    assert [s.name for s in watched.current().servers] == ["a"]


def test_a_file_changed_within_the_same_size_and_time_is_seen(tmp_path: Path) -> None:
    # current() compares the stamp (mtime, size, inode): a same-size edit is caught by mtime.
    path = tmp_path / "servers.json"
    path.write_text(GOOD)
    watched = ServersFile(path)
    watched.current()
    path.write_text(GOOD.replace('"a"', '"b"').replace("//a:", "//b:"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert [s.name for s in watched.current().servers] == ["b"]


# Fingerprints served by a pool


def test_a_fingerprint_naming_only_its_model_is_served_by_a_pool() -> None:
    fingerprint = Fingerprint.model_validate({"model_human_readable_id": "m"})
    assert fingerprint.pooled
    assert fingerprint.server_label == "the pool of its model"


def test_a_pool_fingerprint_may_narrow_its_pool() -> None:
    fingerprint = Fingerprint.model_validate(
        {"model_human_readable_id": "m", "inference_servers": ["a"]}
    )
    assert fingerprint.pooled and fingerprint.inference_servers == ["a"]


@pytest.mark.parametrize(
    "extra",
    [
        {"inference_server_url": "http://x:1", "inference_servers": ["a"]},
        {"inference_server_token": "secret"},
        {"inference_server_token_env": "TOKEN"},
        {"inference_server_token_file": "/run/token"},
        {"inference_server_api": 2},
        {"inference_servers": []},
    ],
)
def test_a_pool_fingerprint_refuses_what_belongs_to_one_server(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Fingerprint.model_validate({"model_human_readable_id": "m", **extra})


def test_a_fingerprint_with_a_url_may_name_its_token_and_api() -> None:
    fingerprint = Fingerprint.model_validate(
        {"model_human_readable_id": "m", "inference_server_url": "http://x:1",
         "inference_server_token": "t", "inference_server_api": 2}
    )  # fmt: skip
    assert not fingerprint.pooled


def test_a_pool_fingerprint_copy_validates_again() -> None:
    fingerprint = Fingerprint.model_validate(
        {"model_human_readable_id": "m", "inference_servers": ["a", "b"]}
    )
    assert Fingerprint.model_validate(fingerprint.snapshot()) == fingerprint


# The pools' state in the database


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")


def record(engine: Engine, *, probe: bool, ok: bool, at: int = 0) -> str | None:
    return pool.record(
        engine, "a", probe=probe, ok=ok, detail="HTTP 503" if not ok else "HTTP 200",
        now=T0 + timedelta(seconds=at), down_after=DOWN_AFTER,
    )  # fmt: skip


def state_of(engine: Engine, name: str = "a") -> str:
    return next(s.state for s in pool.statuses(engine, [server(name)]) if s.name == name)


def is_down(engine: Engine) -> bool:
    """Whether the choice sees `a` down (and the status says the same)."""
    down = pool.members(engine, [server("a")], T0, timedelta(hours=1))["a"].down
    assert down == (state_of(engine) in ("down", "down, drained"))
    return down


def add_jobs(engine: Engine, states: dict[str, list[str]], submitted_at: datetime) -> None:
    """Jobs of a pool fingerprint held by each named server, one per state given."""
    fingerprint = Fingerprint.model_validate({"model_human_readable_id": "m"})
    with Session(engine) as session, session.begin():
        series = Series(series_instance_uid="1.2.3", study_instance_uid="1.2", patient_id="P",
                        folder="f", first_received_at=T0, last_received_at=T0)  # fmt: skip
        session.add(series)
        session.flush()
        for name, held in states.items():
            session.add_all(
                Job(series_id=series.id, fingerprint_name="m.json", fingerprint=fingerprint,
                    state=state, next_attempt_at=T0, created_at=T0, updated_at=T0,
                    submitted_at=submitted_at, server_name=name)
                for state in held
            )  # fmt: skip


def test_a_member_goes_down_after_failed_submits_in_a_row(engine: Engine) -> None:
    assert record(engine, probe=False, ok=False) is None
    assert record(engine, probe=False, ok=False) is None
    assert not is_down(engine)
    change = record(engine, probe=False, ok=False)
    assert change is not None and "is down" in change and "3 submits" in change
    assert is_down(engine)
    assert record(engine, probe=False, ok=False) is None  # said once


def test_a_good_submit_breaks_the_run_of_failures(engine: Engine) -> None:
    record(engine, probe=False, ok=False)
    record(engine, probe=False, ok=False)
    assert record(engine, probe=False, ok=True) is None
    assert record(engine, probe=False, ok=False) is None
    assert not is_down(engine)


def test_a_member_down_for_its_submits_comes_back_on_trial(engine: Engine) -> None:
    for _ in range(DOWN_AFTER):
        record(engine, probe=False, ok=False)
    change = record(engine, probe=True, ok=True)
    assert change is not None and "on trial" in change
    assert not is_down(engine)
    change = record(engine, probe=False, ok=False)  # one more failure takes it out
    assert change is not None and "is down" in change
    assert is_down(engine)


def test_a_good_submit_on_trial_clears_the_trial(engine: Engine) -> None:
    for _ in range(DOWN_AFTER):
        record(engine, probe=False, ok=False)
    record(engine, probe=True, ok=True)
    assert record(engine, probe=False, ok=True) is None
    assert record(engine, probe=False, ok=False) is None
    assert not is_down(engine)


def test_a_member_goes_down_after_failed_probes_and_back_after_a_good_one(engine: Engine) -> None:
    assert record(engine, probe=True, ok=False) is None
    assert record(engine, probe=True, ok=False) is None
    change = record(engine, probe=True, ok=False)
    assert change is not None and "is down" in change and "probes" in change
    assert is_down(engine)
    change = record(engine, probe=True, ok=True)
    assert change is not None and "back in its pool" in change and "trial" not in change
    assert not is_down(engine)


def test_probes_and_submits_are_counted_apart(engine: Engine) -> None:
    for _ in range(DOWN_AFTER - 1):
        record(engine, probe=True, ok=False)
        record(engine, probe=False, ok=False)
    assert not is_down(engine)


def test_the_status_tells_the_last_probe_and_the_error_rate(engine: Engine) -> None:
    record(engine, probe=True, ok=True)
    record(engine, probe=False, ok=False, at=10)
    [status] = pool.statuses(engine, [server("a")])
    assert (status.state, status.last_probe, status.last_error) == ("up", "HTTP 200", "HTTP 503")
    assert status.last_probe_at == T0 and status.error_rate == 0.5


def test_a_drained_member_shows_as_drained(engine: Engine) -> None:
    servers = [server("a"), server("b")]
    said = pool.set_drained(engine, servers, "a", True, T0)
    assert "a is drained" in said
    assert "already" in pool.set_drained(engine, servers, "a", True, T0)
    states = {s.name: s.state for s in pool.statuses(engine, servers)}
    assert states == {"a": "drained", "b": "up"}


def test_a_resumed_member_takes_jobs_again(engine: Engine) -> None:
    servers = [server("a")]
    pool.set_drained(engine, servers, "a", True, T0)
    assert pool.set_drained(engine, servers, "a", False, T0) == "a takes jobs again"
    assert state_of(engine) == "up"
    assert "already" in pool.set_drained(engine, servers, "a", False, T0)


def test_resume_brings_back_a_member_that_is_down(engine: Engine) -> None:
    for _ in range(DOWN_AFTER):
        record(engine, probe=True, ok=False)
    assert pool.resume(engine, "a")
    assert not is_down(engine)


def test_members_show_a_down_member_as_down(engine: Engine) -> None:
    for _ in range(DOWN_AFTER):
        record(engine, probe=False, ok=False)
    state = pool.members(engine, [server("a"), server("b")], T0, timedelta(hours=1))
    assert state["a"].down and not state["a"].usable
    assert not state["b"].down and state["b"].usable


def test_members_show_a_drained_member_as_drained(engine: Engine) -> None:
    servers = [server("a"), server("b")]
    pool.set_drained(engine, servers, "a", True, T0)
    state = pool.members(engine, servers, T0, timedelta(hours=1))
    assert state["a"].drained and not state["a"].usable and not state["b"].drained


def test_members_count_jobs_in_flight_and_taken_lately(engine: Engine) -> None:
    add_jobs(engine, {"a": ["submitting", "submitted", "delivered"], "b": ["pending"]}, T0)
    servers = [server("a", capacity=8, weight=2.0), server("b")]
    state = pool.members(engine, servers, T0 + timedelta(minutes=30), timedelta(hours=1))
    assert state["a"] == PoolMember("a", 8, 2.0, in_flight=2, recent=3)
    assert state["b"] == PoolMember("b", 4, 1.0, in_flight=0, recent=1)
    later = pool.members(engine, servers, T0 + timedelta(hours=2), timedelta(hours=1))
    assert (later["a"].in_flight, later["a"].recent) == (2, 0)


def test_in_flight_counts_jobs_submitting_and_submitted(engine: Engine) -> None:
    add_jobs(engine, {"a": ["submitting", "submitted", "delivered"], "b": ["pending"]}, T0)
    assert pool.in_flight(engine, ["a", "b", "c"]) == {"a": 2}
    [status] = pool.statuses(engine, [server("a")])[:1]
    assert status.in_flight == 2


def test_draining_an_unknown_server_is_refused(engine: Engine) -> None:
    with pytest.raises(LookupError, match="'zz'"):
        pool.set_drained(engine, [server("a")], "zz", True, T0)
    with pytest.raises(LookupError):
        pool.set_drained(engine, [server("a")], "zz", False, T0)


def test_a_server_gone_from_the_file_shows_as_removed(engine: Engine) -> None:
    pool.drain(engine, "old", T0)
    states = {s.name: s.state for s in pool.statuses(engine, [server("a")])}
    assert states == {"a": "up", "old": "removed"}


def test_a_remembered_study_is_held_until_it_expires(engine: Engine) -> None:
    pool.remember(engine, [("1.2", "m", "a")], T0, timedelta(hours=1))
    keys = {("1.2", "m"), ("1.2", "other"), ("9.9", "m")}
    assert pool.affinities(engine, keys, T0 + timedelta(minutes=59)) == {("1.2", "m"): "a"}
    assert pool.affinities(engine, keys, T0 + timedelta(hours=1)) == {}


def test_remembering_again_moves_the_study_and_extends_its_hold(engine: Engine) -> None:
    pool.remember(engine, [("1.2", "m", "a")], T0, timedelta(hours=1))
    pool.remember(engine, [("1.2", "m", "b")], T0 + timedelta(minutes=30), timedelta(hours=1))
    later = T0 + timedelta(minutes=80)
    assert pool.affinities(engine, [("1.2", "m")], later) == {("1.2", "m"): "b"}


def test_one_dispatch_may_remember_a_study_several_times(engine: Engine) -> None:
    held = [("1.2", "m", "a"), ("1.2", "m", "a"), ("1.3", "m", "b")]
    pool.remember(engine, held, T0, timedelta(hours=1))
    found = pool.affinities(engine, [("1.2", "m"), ("1.3", "m")], T0)
    assert found == {("1.2", "m"): "a", ("1.3", "m"): "b"}


def test_no_study_asked_is_no_query(engine: Engine) -> None:
    assert pool.affinities(engine, [], T0) == {}


def test_among_equal_shares_the_most_free_capacity_for_its_weight_wins() -> None:
    big = member("big", capacity=8, in_flight=3, recent=3)  # 5 of 8 free
    small = member("small", capacity=2, in_flight=1, recent=3)  # 1 of 2 free
    assert chosen_name(choose([small, big])) == "big"
    heavy = member("heavy", capacity=4, weight=2, in_flight=2, recent=2)  # a share of 1
    light = member("light", capacity=4, weight=1, in_flight=1, recent=1)  # a share of 1
    assert chosen_name(choose([light, heavy])) == "heavy"  # half full for weight 2: 0.25


def test_shares_follow_the_weights_even_when_jobs_stay_in_flight() -> None:
    members = {"a": member("a", capacity=50, weight=2), "b": member("b", capacity=50)}
    for _ in range(30):  # every job stays in flight: in_flight and recent both grow
        name = chosen_name(choose(list(members.values())))
        m = members[name]
        members[name] = dataclasses.replace(m, in_flight=m.in_flight + 1, recent=m.recent + 1)
    assert (members["a"].in_flight, members["b"].in_flight) == (20, 10)


def test_a_full_pools_backlog_never_hides_other_due_jobs(engine: Engine) -> None:
    from isdr.db.jobs import due_submits

    add_jobs(engine, {"a": ["waiting"] * 6, "b": ["pending"]}, T0)
    due = due_submits(engine, T0, limit=5)
    assert len(due) == 6 and any(item.last_server == "b" for item in due)


def test_a_reason_belongs_to_the_waiting_state_alone(engine: Engine) -> None:
    from isdr.db.jobs import change_state
    from isdr.domain.states import JobState

    add_jobs(engine, {"a": ["pending"]}, T0)
    with Session(engine) as session:
        job_id = session.query(Job.id).scalar()
    assert pool.wait(engine, job_id, "every server of its pool is full: a (4 of 4)", T0)
    assert not pool.wait(engine, job_id, "every server of its pool is full: a (4 of 4)", T0)
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id)
        assert job.waiting_for is not None
        change_state(session, job, JobState.FAILED, "cancelled", T0)
        assert job.waiting_for is None
