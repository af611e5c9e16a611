"""Named InferenceServers (SERVERS_FILE), their pools, and the pure choice of the member
that takes a job.

    {"servers": [{"name": "gpu-a", "url": "https://gpu-a:8000", "api": 2,
                  "models": ["ct-seg"], "capacity": 4, "weight": 2}]}

A fingerprint without `inference_server_url` is served by the pool of every server that
lists its model (narrowed by its `inference_servers`). A job goes to the member that holds
its study's earlier jobs while that member is up and not drained; otherwise to the member
given the fewest jobs lately for its weight (jobs given in the last POOL_AFFINITY_MINUTES,
in flight ones included, / weight), so that shares follow the weights whether jobs last
long or not; ties: the most free capacity (jobs in flight / capacity / weight), then the
name. A member with as many
jobs in flight as its capacity takes no more: when no member can take the job, it waits,
and the reason says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from isdr.domain.deid import Deidentify
from isdr.domain.fingerprint import (
    Fingerprint,
    has_control_character,
    one_token_source,
    printable_secret,
    read_token,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ModelId = str


class Server(BaseModel):
    """One InferenceServer, named once for every fingerprint whose model it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str  # letters, digits, . _ -: said in logs and URLs
    url: AnyHttpUrl
    api: Literal[1, 2] = 1
    models: list[ModelId] = Field(min_length=1, max_length=1000)
    capacity: int = Field(4, ge=1, le=100_000)  # jobs it may hold at once
    weight: float = Field(1.0, gt=0, le=1000)  # its share against the others'
    token: SecretStr | None = None
    token_env: str | None = Field(None, min_length=1)  # a variable's name
    token_file: str | None = Field(None, min_length=1)  # a file's path
    # The whole server is outside the hospital: every job sent to it is de-identified
    # (with the fingerprint's own options when it names some).
    deidentify: bool | Deidentify = False

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(
                "a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
                "or a digit"
            )
        return name

    @field_validator("models")
    @classmethod
    def _named_models(cls, models: list[str]) -> list[str]:
        if any(not model.strip() or has_control_character(model) for model in models):
            raise ValueError("a model id is empty or holds a control character")
        return models

    @field_validator("token")
    @classmethod
    def _printable_token(cls, token: SecretStr | None) -> SecretStr | None:
        return printable_secret(token)

    @field_serializer("token", when_used="json")
    def _reveal_token(self, token: SecretStr | None) -> str | None:
        # A job's copy of its server keeps the token to poll with it; logs never print it.
        return token.get_secret_value() if token is not None else None

    @model_validator(mode="after")
    def _one_token_source(self) -> Server:
        one_token_source(self.token, self.token_env, self.token_file, "token")
        return self

    def serves(self, model: str) -> bool:
        """Whether it lists the model."""
        return model in self.models

    def token_value(self) -> str | None:
        """The token to send (TokenUnavailable when its variable or file cannot be read)."""
        return read_token(self.token, self.token_env, self.token_file, "token")


class Servers(BaseModel):
    """The whole servers file."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    servers: list[Server] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _one_entry_per_name(self) -> Servers:
        names = [server.name.lower() for server in self.servers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"a name may appear once (case does not count): {', '.join(repeated)}")
        return self

    def find(self, name: str) -> Server | None:
        """The server of that name."""
        return next((server for server in self.servers if server.name == name), None)

    def pool(self, model: str, wanted: Sequence[str] | None = None) -> list[Server]:
        """The members that may take a model's jobs: every server listing it, only those
        named in `wanted` (a fingerprint's `inference_servers`) when given."""
        return [
            server
            for server in self.servers
            if server.serves(model) and (wanted is None or server.name in wanted)
        ]

    def problems(self, fingerprint: Fingerprint) -> list[str]:
        """What makes a pool fingerprint's pool smaller than written, or empty, in words."""
        if fingerprint.inference_server_url is not None:
            return []
        model = fingerprint.model_human_readable_id
        found = []
        for name in fingerprint.inference_servers or ():
            server = self.find(name)
            if server is None:
                found.append(f"inference_servers names {name!r}, which SERVERS_FILE does not")
            elif not server.serves(model):
                found.append(f"the server {name!r} does not list the model {model!r}")
        if not self.pool(model, fingerprint.inference_servers):
            found.append(f"no server in SERVERS_FILE serves the model {model!r}: its jobs wait")
        return found


@dataclass(frozen=True)
class PoolMember:
    """One pool member as the choice sees it at one moment."""

    name: str
    capacity: int
    weight: float
    in_flight: int = 0  # jobs it holds or is being sent (from the database)
    recent: int = 0  # jobs it was given lately (what keeps shares to the weights)
    down: bool = False
    drained: bool = False

    @property
    def usable(self) -> bool:
        """Up and not drained."""
        return not self.down and not self.drained

    @property
    def share(self) -> float:
        """Jobs it was given lately (in flight ones included), for its weight: the lowest
        takes the next job, so that over time each member's share follows its weight."""
        return max(self.recent, self.in_flight) / self.weight

    @property
    def load(self) -> float:
        """How full it is for its weight: jobs in flight over capacity, over weight (the
        member with the most free capacity for its weight has the lowest)."""
        return self.in_flight / self.capacity / self.weight

    @property
    def full(self) -> bool:
        """As many jobs in flight as its capacity."""
        return self.in_flight >= self.capacity

    def describe(self) -> str:
        """Its name and why it cannot take a job now (or its load)."""
        if self.down and self.drained:
            return f"{self.name} (down, drained)"
        if self.down or self.drained:
            return f"{self.name} ({'down' if self.down else 'drained'})"
        return f"{self.name} ({self.in_flight} of {self.capacity})"


@dataclass(frozen=True)
class Chosen:
    """The member that takes the job, and why (said in the job's timeline)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Wait:
    """No member can take the job now: why, in words."""

    reason: str


def choose(
    members: Sequence[PoolMember], affinity: str | None = None, avoid: str = ""
) -> Chosen | Wait:
    """The member that takes a job: the study's (`affinity`) while it is up and not drained
    (the job waits for it when it is full), else the least loaded for its weight with a
    free slot (see PoolMember.share and .load), preferring any other to `avoid` (the one
    that just failed this job)."""
    if not members:
        return Wait("no server in SERVERS_FILE serves its model (see isdr fingerprints check)")
    held = next((m for m in members if m.name == affinity), None)
    if held is not None and held.usable:
        if held.full:
            return Wait(
                f"waiting for {held.name}, which holds this study's earlier jobs and is full "
                f"({held.in_flight} of {held.capacity})"
            )
        return Chosen(held.name, "it holds this study's earlier jobs")
    free = [m for m in members if m.usable and not m.full]
    if not free:
        usable = [m for m in members if m.usable]
        what = "full" if usable else "down or drained"
        listed = ", ".join(m.describe() for m in members)
        return Wait(f"every server of its pool is {what}: {listed}")
    best = min(free, key=lambda m: (m.name == avoid, m.share, m.load, m.name))
    load = f"{best.in_flight} of {best.capacity}"
    return Chosen(best.name, f"the fewest jobs lately for its weight ({load})")


def names_ok(names: Iterable[str]) -> bool:
    """Whether every name is a server name (what the API and CLI accept in a path)."""
    return all(re.fullmatch(NAME_PATTERN, name) for name in names)
