"""Cut-outs of a real agent run on a wide field: stored with ra/dec, found by a cone search."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from catalogue_testkit import build_tiny_bundle

from catalogue.messages import parse_message
from catalogue.store import Cone, Query, Store
from catalogue.store.query import angular_separation
from edge_agent.fields.synthetic import make_field, model_galaxy, write_fits

P = "galaxy-edge"
TOPIC = {"classification": "classifications", "frame_summary": "summaries", "error": "errors"}


@pytest.fixture(scope="module")
def agent_output(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    work = tmp_path_factory.mktemp("wide")
    bundle = build_tiny_bundle(work / "model")
    galaxies = [model_galaxy(r_e=8 + 3 * i, angle_deg=40 * i) for i in range(4)]
    field = make_field(galaxies, shape=(1024, 1024), n_stars=60, bands=3, noise=20.0, seed=7)
    fits = write_fits(field, work / "wide.fits", "float32")
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent", "classify", "--bundle", str(bundle), "--sources", str(fits)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_cut_outs_are_found_by_their_sky_position(
    store: Store, agent_output: list[dict[str, object]]
) -> None:
    device = "wide-1"
    records = []
    for body in agent_output:
        body = {**body, "device_id": device}  # classify prints the config's device id
        records.append(
            parse_message(f"{P}/{device}/{TOPIC[str(body['type'])]}", json.dumps(body).encode(), P)
        )
    store.write(records)
    rows = store.query(Query())
    cutouts = [b for b in agent_output if b["type"] == "classification"]
    assert len(rows) == len(cutouts) >= 4
    assert all(r["ra"] is not None and r["x"] is not None for r in rows)
    assert store.count("messages") == 1  # the frame's summary
    target = rows[0]
    near = store.query(Query(cone=Cone(target["ra"], target["dec"], 2 / 3600)))
    assert [r["id"] for r in near] == [target["id"]]
    radius = 0.05
    inside = {
        r["id"]
        for r in rows
        if angular_separation(r["ra"], r["dec"], target["ra"], target["dec"]) <= radius
    }
    assert {
        r["id"] for r in store.query(Query(cone=Cone(target["ra"], target["dec"], radius)))
    } == inside
