"""A wide field dropped into a watched folder: summary, cut-out classifications and problems on MQTT.

The real agent (in process), a real Mosquitto; every payload validated against its closed schema.
Runs without the Galaxy10 sample (model galaxies) and with the tiny test bundle.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from agent_testkit import RunningAgent, agent_config, drop_file, write_config
from jsonschema import Draft202012Validator
from mqtt_broker import Collector, MosquittoBroker

from edge_agent.classify import OneShot
from edge_agent.config import load_config
from edge_agent.fields.synthetic import make_field, model_galaxy, write_fits
from edge_agent.schemas import closed_schema, load_schema


def bodies(collector: Collector, topic: str) -> list[dict]:
    return [json.loads(m.payload) for m in collector.messages if m.topic.endswith("/" + topic)]


def assert_valid(body: dict) -> None:
    check = Draft202012Validator(
        closed_schema(load_schema(body["type"])), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(body)]
    assert not errors, (body["type"], errors)


@pytest.mark.mqtt
def test_wide_fields_through_the_agent_to_mqtt(
    mosquitto: MosquittoBroker, tiny_bundle: Path, tmp_path: Path
) -> None:
    raw = agent_config(tmp_path, tiny_bundle, mosquitto)
    raw["sources"][0]["mode"] = "fields"
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    field = make_field(
        [model_galaxy(r_e=9 + 3 * i, angle_deg=50 * i) for i in range(4)],
        shape=(1024, 1024),
        n_stars=60,
        bands=1,
        noise=20.0,
        seed=11,
    )
    wide = write_fits(field, tmp_path / "wide.fits", "uint16").read_bytes()
    empty = make_field([], shape=(512, 512), n_stars=0, bands=1, seed=12)
    bare = write_fits(empty, tmp_path / "empty.fits", "float32", with_wcs=False).read_bytes()
    collector = Collector(mosquitto, "galaxy-edge/#")
    try:
        with RunningAgent(cfg):
            drop_file(inbox, "wide.fits", wide)
            drop_file(inbox, "empty.fits", bare)
            drop_file(inbox, "broken.fits", wide[:5000])

            def settled(_: object) -> bool:
                summaries = bodies(collector, "summaries")
                wanted = sum(s["galaxies_classified"] for s in summaries)
                return (
                    len(summaries) == 2
                    and len(bodies(collector, "classifications")) >= max(wanted, 1)
                    and len(bodies(collector, "errors")) >= 2
                )

            assert collector.wait_for(settled, 60), [m.topic for m in collector.messages]
    finally:
        collector.close()
    summaries = {Path(s["frame_ref"].split("@")[0]).name: s for s in bodies(collector, "summaries")}
    results = bodies(collector, "classifications")
    errors = bodies(collector, "errors")
    for body in [*summaries.values(), *results, *errors]:
        assert_valid(body)
    main = summaries["wide.fits"]
    assert main["galaxies_classified"] >= 4 and main["sky"] == "wcs"
    assert main["rejected"]["star"] >= 50
    assert len(results) == main["galaxies_classified"]
    assert {r["frame_ref"] for r in results} == {main["frame_ref"]}
    assert all(r["cutout"]["ra"] is not None for r in results)
    nothing = summaries["empty.fits"]
    assert nothing["galaxies_kept"] == 0 and nothing["sky"] == "none"
    assert {(Path(e["frame_ref"].split("@")[0]).name, e["reason"]) for e in errors} >= {
        ("empty.fits", "no_wcs"),
        ("broken.fits", "truncated"),
    }
    broken = next(e for e in errors if e["reason"] == "truncated")
    assert broken["quarantined_to"] and Path(broken["quarantined_to"]).is_file()
    # edge-agent classify on the same files with the same config prints the same objects.
    oneshot = OneShot(tiny_bundle, load_config(cfg))
    try:
        printed = [b for name in ("wide.fits", "empty.fits") for b in oneshot.run(inbox / name)]
    finally:
        oneshot.close()
    published = [*summaries.values(), *results, *errors]
    by_id = {b["id"]: b for b in published if "broken.fits" not in b["frame_ref"]}  # quarantined
    assert {b["id"] for b in printed} == set(by_id)
    for body in printed:
        wire = by_id[body["id"]]
        assert body["type"] == wire["type"] and body["frame_ref"] == wire["frame_ref"]
        if body["type"] == "classification":
            assert body["cutout"] == wire["cutout"] and body["class_id"] == wire["class_id"]
            assert body["probabilities"] == pytest.approx(wire["probabilities"], abs=1e-5)
    # Every frame is done in the ledger once its cut-outs are stored: nothing left to replay.
    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite3") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    assert states.get("seen", 0) == 0, states
