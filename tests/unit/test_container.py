"""What can be checked of the image without a Docker engine: the Dockerfile and scripts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from isdr import cli
from isdr.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CONTAINER_PATHS = {
    "SCP_HOSTNAME",
    "INCOMING_DIR",
    "FINGERPRINT_DIR",
    "CERT_FILE",
    "DATA_DIR",
    "USERS_FILE",
    "SENDERS_FILE",
    "SERVERS_FILE",
}
TOOLS = Path(sys.executable).parent


def instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def environment() -> dict[str, str]:
    pairs = shlex.split(" ".join(instructions("ENV")))
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_image_runs_as_a_numeric_user_that_is_not_root() -> None:
    [user] = instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_image_may_listen_on_port_104_as_its_user() -> None:
    [step] = [run for run in instructions("RUN") if "setcap" in run]
    assert 'setcap cap_net_bind_service=+ep "$python"' in step
    assert 'python="$(readlink -f /usr/local/bin/python3)"' in step  # the file, not a link
    assert "apt-get install -y --no-install-recommends libcap2-bin" in step
    assert step.index("setcap") < step.index("apt-get purge -y --auto-remove libcap2-bin")
    assert step.endswith("rm -rf /var/lib/apt/lists/*")
    assert DOCKERFILE.index("setcap") < DOCKERFILE.index("\nUSER ")  # as root, before USER


def test_the_health_check_is_a_real_c_echo_by_the_installed_isdr() -> None:
    [check] = instructions("HEALTHCHECK")
    assert check.endswith('CMD ["isdr", "echo"]')


def test_every_setting_has_a_working_default_in_the_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("HTTP_PORT", "HEARTBEAT_INTERVAL"):  # the tests' own: compare with the code's
        monkeypatch.delenv(variable, raising=False)
    env = environment()
    assert sorted(set(Settings.model_fields) - set(env)) == []
    in_image = Settings(**{k: v for k, v in env.items() if k in Settings.model_fields})
    assert in_image.SCP_HOSTNAME == "0.0.0.0"
    for name in set(Settings.model_fields) - CONTAINER_PATHS:
        assert getattr(in_image, name) == getattr(Settings(), name), name


def test_the_entry_point_is_the_installed_isdr_command() -> None:
    assert instructions("ENTRYPOINT") == ['["isdr"]'] and instructions("CMD") == ['["serve"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["isdr"] == "isdr.cli:main" and callable(cli.main)
    assert instructions("STOPSIGNAL") == ["SIGTERM"]


def test_the_constraints_pin_every_dependency_and_every_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for deps in project["optional-dependencies"].values() for dep in deps]
    wanted = {
        re.split(r"[<>=\[ ]", dep)[0].lower()
        for dep in [*project["dependencies"], *extras]
        if not dep.startswith("isdr")
    }
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in lines if "==" in line}
    assert {name.replace("_", "-") for name in wanted} <= pinned


@pytest.mark.parametrize(
    "command",
    [
        [str(TOOLS / "hadolint"), "Dockerfile"],
        [str(TOOLS / "shellcheck"), "build.sh", "run.sh.example", ".ci/run"],
    ],
    ids=["hadolint", "shellcheck"],
)
def test_the_dockerfile_and_the_scripts_pass_their_linters(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
