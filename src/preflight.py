"""`isdr fingerprints check --online`: reach what the fingerprints name before a patient does.

Per InferenceServer (each distinct URL, generation and token): the TLS handshake against
CERT_FILE, the API generation answering as configured (a poll of a made-up task must get
the generation's "no such task"), and the model known where the server lets us ask. Per
destination: a C-ECHO, over TLS when the fingerprint says so. Every problem is one line
naming the fingerprint; the command exits non-zero when there is one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from isdr.domain.destination import Destination
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
from isdr.domain.servers import Server, Servers
from isdr.inference.client import NO_SUCH_TASK, InferenceClient, Target
from isdr.scu.echo import echo
from isdr.tls import TlsFilesError, client_context


@dataclass(frozen=True)
class Finding:
    """One line of the report: OK or a problem, about one fingerprint's server or scu."""

    ok: bool
    text: str

    def line(self) -> str:
        return f"{'OK   ' if self.ok else 'ERROR'}  {self.text}"


def check_online(
    fingerprints: Mapping[str, Fingerprint],
    client: InferenceClient,
    calling_ae_title: str,
    pools: Servers | None = None,
) -> list[Finding]:
    """Reach every server (each member of a pool) and destination of `fingerprints` once
    each."""
    findings: list[Finding] = []
    servers: dict[tuple[str, int, str], list[Finding]] = {}
    for name, fingerprint in sorted(fingerprints.items()):
        members: list[Server | None] = [None]
        if fingerprint.pooled:
            model = fingerprint.model_human_readable_id
            members = list((pools or Servers()).pool(model, fingerprint.inference_servers))
        for member in members:
            try:
                target = Target.of(fingerprint, member)
            except TokenUnavailable as exc:
                findings.append(Finding(False, f"{name}: {exc}"))
                continue
            key = (target.url, target.api, target.model)
            if key not in servers:
                servers[key] = check_server(target, client)
            findings += [Finding(f.ok, f"{name}: {f.text}") for f in servers[key]]
        for scu in fingerprint.nodes:  # "the sender" is known only per job
            findings.append(_named(name, check_destination(scu, calling_ae_title)))
    return findings


def _named(name: str, finding: Finding) -> Finding:
    return Finding(finding.ok, f"{name}: {finding.text}")


def check_server(target: Target, client: InferenceClient) -> list[Finding]:
    """TLS, generation and model of one server."""
    where = f"{target.url} (generation {target.api})"
    probe = client.probe(target, "isdr-check-" + secrets.token_hex(8))
    if probe.status is None:
        return [Finding(False, f"{where}: {probe.detail}")]
    if probe.status not in NO_SUCH_TASK[target.api]:
        other = 2 if target.api == 1 else 1
        return [Finding(False, (
            f"{where}: a poll of an unknown task answered {probe.status}, not what generation "
            f"{target.api} answers ({'/'.join(map(str, NO_SUCH_TASK[target.api]))}): is it a "
            f"generation-{other} server? Then set inference_server_api to {other} "
            f"({_url_hint(other)})"
        ))]  # fmt: skip
    return [Finding(True, f"{where}: TLS verified, answers as generation {target.api}"),
            _model_finding(target, client, where)]  # fmt: skip


def _url_hint(api: int) -> str:
    if api == 1:
        return "and the full tasks URL, ending in /api/tasks/"
    return "and the base URL, without /api/tasks/"


def _model_finding(target: Target, client: InferenceClient, where: str) -> Finding:
    listed = client.models(target)
    if listed is None:
        return Finding(True, f"{where}: model {target.model!r} not checked (the server does "
                             "not list its models to us)")  # fmt: skip
    if target.model in listed:
        return Finding(True, f"{where}: knows the model {target.model!r}")
    return Finding(False, f"{where}: does not know the model {target.model!r} (it lists: "
                          f"{', '.join(listed) or 'none'})")  # fmt: skip


def check_destination(scu: Destination, calling_ae_title: str) -> Finding:
    """A C-ECHO to one destination, as the relay's AE, over TLS when configured."""
    if scu.ae_title_too_long:
        return Finding(False, f"{scu}: AE title longer than 16 characters: it cannot be called")
    try:
        context = None if scu.tls is None else client_context(scu.tls)
    except TlsFilesError as exc:
        return Finding(False, f"{scu}: {exc}")
    answer = echo(scu.host, scu.port, scu.ae_title, tls=context, calling_ae_title=calling_ae_title)
    return Finding(answer.ok, f"{scu}: {answer.detail}")
