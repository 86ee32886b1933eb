"""The live page: its HTTP API, and in real headless Chromium against a running agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from catalogue_testkit import (
    agent_yaml,
    build_tiny_bundle,
    classification,
    status,
    tiny_jpeg,
    to_bytes,
    wait_until,
)
from headless_chromium import Browser, require_chromium
from mqtt_broker import MosquittoBroker, free_port

from catalogue.messages import parse_message
from catalogue.store import open_store
from catalogue.web.server import LivePage
from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.local_run import stop_process

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / "examples" / "frames"
P = "galaxy-edge"


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[LivePage, str]]:
    url = f"sqlite:///{tmp_path / 'cat.sqlite3'}"
    open_store(url).close()
    live = LivePage(lambda: open_store(url), "127.0.0.1", 0)
    live.start()
    yield live, url
    live.stop()


def test_the_page_its_api_and_thumbnails_are_served_locally(page: tuple[LivePage, str]) -> None:
    live, url = page
    c = classification("dev-1", 4)
    store = open_store(url)
    store.write(
        [
            parse_message(f"{P}/dev-1/status", to_bytes(status("dev-1")), P),
            parse_message(f"{P}/dev-1/classifications", to_bytes(c), P),
            parse_message(f"{P}/dev-1/thumbnails/{c['id']}", tiny_jpeg(), P),
        ]
    )
    store.close()
    code, html, ctype = get(live.url)
    assert code == 200 and ctype.startswith("text/html")
    assert b"http://" not in html and b"https://" not in html  # nothing from elsewhere
    for asset in ("app.js", "style.css"):
        code, body, _ = get(live.url + asset)
        assert code == 200 and b"http://" not in body and b"https://" not in body
    code, body, ctype = get(live.url + "api/state")
    state = json.loads(body)
    assert ctype == "application/json" and state["devices"][0]["state"] == "online"
    assert state["latest"][0]["id"] == c["id"] and state["latest"][0]["has_thumbnail"]
    code, jpeg, ctype = get(f"{live.url}thumbnails/dev-1/{c['id']}.jpg")
    assert (code, ctype, jpeg) == (200, "image/jpeg", tiny_jpeg())
    assert get(f"{live.url}thumbnails/dev-1/{'0' * 32}.jpg")[0] == 404
    assert get(f"{live.url}../../etc/passwd")[0] == 404


def _state(url: str) -> dict[str, Any]:
    try:
        return dict(json.loads(get(url + "api/state")[1]))
    except (OSError, ValueError):
        return {}


@pytest.mark.mqtt
@pytest.mark.slow
def test_a_classification_appears_in_chromium_without_a_reload(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    require_chromium()
    bundle = build_tiny_bundle(tmp_path / "model")
    port = free_port()
    page_url = f"http://127.0.0.1:{port}/"
    log = (tmp_path / "processes.log").open("ab")
    writer = subprocess.Popen(
        [
            sys.executable, "-m", "catalogue", "run", "--database",
            f"sqlite:///{tmp_path / 'cat.sqlite3'}", "--host", mosquitto.host, "--port",
            str(mosquitto.port), "--client-id", "page-test", "--http", f"127.0.0.1:{port}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    config = agent_yaml(tmp_path / "agent", bundle, mosquitto.host, mosquitto.port, "observatory-1")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    frames = sorted(FRAMES.glob("*.jpg"))[:6]
    try:
        online = wait_until(
            lambda: any(d["state"] == "online" for d in _state(page_url).get("devices", [])), 60
        )
        assert online, (tmp_path / "processes.log").read_text()[-3000:]
        with Browser(page_url) as browser:
            device = "document.querySelector('[data-device=\"observatory-1\"] .state.online')"
            assert browser.wait_for(f"!!{device}", 20), browser.evaluate("document.body.innerText")
            assert browser.evaluate("document.querySelectorAll('.card.classification').length") == 0
            browser.evaluate("window.__same_page = 'not reloaded'")
            for frame in frames:  # as a receiver writes: beside, then renamed into place
                tmp = tmp_path / "agent" / "inbox" / f".{frame.name}.part"
                shutil.copyfile(frame, tmp)
                os.replace(tmp, tmp.with_name(frame.name))
            cards = (
                "window.__same_page === 'not reloaded' && "
                f"document.querySelectorAll('.card.classification img').length >= {len(frames)} && "
                "[...document.querySelectorAll('.card.classification img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert browser.wait_for(cards, 60), browser.evaluate("document.body.innerText")
            labels = browser.evaluate(
                "[...document.querySelectorAll('.card.classification .label')].map(e => e.textContent)"
            )
            assert len(labels) == len(frames) and set(labels) <= set(CLASS_NAMES)
            counts = browser.evaluate(
                "[...document.querySelectorAll('.histogram .row .n')].map(e => +e.textContent)"
            )
            assert sum(counts) == len(frames)
            fps = "document.querySelector('[data-device=\"observatory-1\"]').innerText"
            assert "frames/s" in browser.evaluate(fps)
            width = browser.evaluate(
                "document.querySelector('.card.classification img').naturalWidth"
            )
            assert width == 128  # the agent's thumbnail, not the frame
            bad = tmp_path / "agent" / "inbox" / ".broken.png.part"  # a truncated PNG
            bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
            os.replace(bad, bad.with_name("broken.png"))
            error = "[...document.querySelectorAll('.errors .error')].map(e => e.innerText).join()"
            assert "broken.png" in (browser.wait_for(error, 30) or ""), browser.evaluate(error)
            shot = os.environ.get("CATALOGUE_SCREENSHOT")
            if shot:  # docs/img/live-view.png is made this way (docs/catalogue.md)
                browser.screenshot(Path(shot))
        state = _state(page_url)
        assert state["totals"]["classifications"] == len(frames)
        assert state["totals"]["errors"] == 1
        assert {c["frame_ref"].split("@")[0].rsplit("/", 1)[-1] for c in state["latest"]} == {
            f.name for f in frames
        }
    finally:
        stop_process(agent)
        stop_process(writer)
        log.close()
