"""The console in a real browser: Debian's headless Chromium, driven by Playwright.

A person logs in, watches a job go from received to delivered without reloading, opens its
pictures, retries a failed job, and writes a fingerprint with a typo and sees the error.
Screenshots of the pages go to ISDR_SCREENSHOTS (docs/img keeps a set) or tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isdr.app import Relay, build_relay
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, make_instance
from isdr.web.users import Role, set_user
from tests.helpers import free_port, relay_settings, send_datasets
from tests.peers import RecordingSCP

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "a long password"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is needed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def destination() -> Iterator[RecordingSCP]:
    running = RecordingSCP("PACS").start()
    yield running
    running.stop()


@pytest.fixture
def relay(tmp_path: Path, standin: StandIn) -> Iterator[Relay]:
    """A relay as it runs by default: a series' files go once it is submitted
    (DELETE_ON_POST), the delivered DICOM outputs once delivered."""
    set_user(tmp_path / "users.json", "olga", Role.OPERATOR, PASSWORD)
    running = build_relay(
        relay_settings(
            tmp_path, HTTP_PORT=free_port(), CERT_FILE=standin.ca_file, POST_AFTER=1,
            POST_INTERVAL=0.2, DELETE_ON_POST=True, GET_INTERVAL=0.2,
        )
    )  # fmt: skip
    running.start()
    yield running
    running.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ISDR_SCREENSHOTS", tmp_path / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.settings.HTTP_PORT}"


def logged_in(browser: Any, relay: Relay, path: str) -> Any:
    """A page of a person logged in as olga, at `path` (through the login form)."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(base(relay) + path)
    assert "/login" in page.url
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    return page


def shown(page: Any, selector: str, timeout: float = 20) -> None:
    """Wait until the picture at `selector` has loaded and has pixels (the page's policy
    forbids the eval that wait_for_function needs, so ask from here)."""
    deadline = time.monotonic() + timeout
    picture = page.locator(selector).first
    while not picture.evaluate("img => img.complete && img.naturalWidth > 0"):
        assert time.monotonic() < deadline, f"{selector} did not load"
        time.sleep(0.1)


def fingerprint(relay: Relay, url: str, model: str = "ct-model", port: int = 0) -> None:
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    scus = [{"scu_ip": "127.0.0.1", "scu_port": port, "scu_ae_title": "PACS"}] if port else []
    (folder / f"{model}.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": url, "scus": scus,
        "model_human_readable_id": model, "series_description_regex": "chest",
    }))  # fmt: skip
    relay.registry.reload()


def send_ct(relay: Relay, study: str) -> None:
    spec = SeriesSpec(modality="CT", count=5, series_description="chest", rows=64, columns=64)
    datasets = [make_instance(spec, i, study, f"{study}.1") for i in range(5)]
    assert send_datasets(relay.scp.port, datasets, calling="CT_SCANNER") == [0] * 5


def test_a_job_is_watched_from_received_to_delivered_and_its_pictures_open(
    browser: Any, relay: Relay, standin: StandIn, shots: Path, destination: RecordingSCP
) -> None:
    fingerprint(relay, standin.url_v1, port=destination.port)
    page = logged_in(browser, relay, "/jobs")
    page.evaluate("window.stillTheSamePage = true")
    send_ct(relay, "1.2.826.0.1.3680043.10.77")
    page.wait_for_selector("#jobs .state.delivered", timeout=30_000)
    assert page.evaluate("window.stillTheSamePage === true")  # no reload: htmx swapped it
    # the files are gone, as by default: the pictures were made before they went
    assert len(destination.received) == 2
    assert not list((relay.settings.DATA_DIR / "jobs").rglob("*.dcm"))
    deadline = time.monotonic() + 20  # the post daemon removes the series' files on its tick
    while list(relay.settings.INCOMING_DIR.rglob("*.dcm")):
        assert time.monotonic() < deadline, "the series' files were not removed"
        time.sleep(0.1)
    page.screenshot(path=str(shots / "console-jobs.png"))
    page.click("#jobs td a[href^='/jobs/']")
    page.wait_for_selector("#prediction")
    shown(page, "#prediction")
    shown(page, "img[alt^='the input']")
    assert "mask.nii.gz" in page.inner_text("main")  # the non-DICOM output, to download
    page.screenshot(path=str(shots / "console-job.png"), full_page=True)
    page.goto(base(relay) + "/")
    page.wait_for_selector("#jobs-delivered")
    assert page.inner_text("#jobs-delivered") == "1"
    page.screenshot(path=str(shots / "console-dashboard.png"))
    page.goto(base(relay) + "/series/1")
    shown(page, "img")
    page.close()


def test_a_failed_job_is_retried_from_its_page(
    browser: Any, relay: Relay, standin: StandIn
) -> None:
    fingerprint(relay, standin.url_v1, model="no-such-model")
    send_ct(relay, "1.2.826.0.1.3680043.10.78")
    page = logged_in(browser, relay, "/jobs?state=failed")
    page.wait_for_selector("#jobs td a[href^='/jobs/']", timeout=60_000)
    page.click("#jobs td a[href^='/jobs/']")
    page.click("#retry")  # its answer is a note beside the part that refreshes itself
    page.locator("#job-note", has_text="pending: it will be submitted again").wait_for()
    page.locator("#timeline", has_text="retried by hand").wait_for()
    page.close()


def test_a_fingerprint_with_a_typo_shows_its_line_as_it_is_typed(
    browser: Any, relay: Relay, shots: Path
) -> None:
    page = logged_in(browser, relay, "/fingerprints/new")
    page.fill("#file-name", "typo.json")
    page.fill("#text", '{\n  "model_human_readable_id": "m",\n  "modality_regexx": "CT"\n}\n')
    page.locator("#problem-list", has_text="modality_regexx").wait_for()
    problems = page.inner_text("#problem-list")
    assert "line 3, column 3: modality_regexx: unknown key" in problems, problems
    page.screenshot(path=str(shots / "console-editor.png"), full_page=True)
    with page.expect_response("**/fingerprints/new") as answer:
        page.click("#save")
    assert answer.value.ok and "modality_regexx" in answer.value.text()
    assert not (relay.settings.FINGERPRINT_DIR / "typo.json").exists()
    page.close()


def test_the_api_page_lists_the_routes_from_the_relay_alone(browser: Any, relay: Relay) -> None:
    page = logged_in(browser, relay, "/docs")
    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(
        base(relay)) else None)  # fmt: skip
    page.reload()
    page.locator(".opblock", has_text="/api/v1/jobs/{job_id}/cancel").first.wait_for()
    assert outside == []
    page.close()
