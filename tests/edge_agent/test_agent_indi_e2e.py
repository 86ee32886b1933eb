"""End to end with a real camera stack: indiserver's CCD simulator -> edge-agent -> Mosquitto.

The simulator's directory mode serves our own uint16 FITS frames pixel for pixel (the stock
simulator renders only stars from a catalogue Debian does not package); the agent drives the
exposures itself and must publish for each the classification that bare ONNX Runtime gives
for the same file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from agent_testkit import RunningAgent, agent_config, expected_probabilities, write_config
from astropy.io import fits
from indi_server import IndiServer, require_indiserver
from mqtt_broker import Collector, MosquittoBroker

from edge_agent.contract.decode import decode_file
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.sources.indi_protocol import (
    IndiConnection,
    IndiElement,
    get_properties,
    new_vector,
)

pytestmark = pytest.mark.mqtt
T = "galaxy-edge/dev1/"
CCD = "CCD Simulator"


def _point_simulator_at(port: int, folder: Path) -> None:
    """What an observer does in Ekos: connect the devices and select directory mode.

    The directory properties exist only once the camera is connected, so each step waits for
    the server to say it is done (a slow machine takes seconds).
    """
    seen: dict[str, dict[str, str]] = {}

    def on(element: IndiElement) -> None:
        if element.device == CCD and element.tag[:3] in ("def", "set"):
            seen.setdefault(element.name, {}).update(element.values())

    def wait(what: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, f"the simulator did not get there: {seen}"
            conn.pump(0.1)

    conn = IndiConnection("127.0.0.1", port, on, max_blob_bytes=1 << 20)
    try:
        conn.send(get_properties())
        for device in (CCD, "Telescope Simulator"):
            conn.send(new_vector("Switch", device, "CONNECTION", [("CONNECT", "On")]))
        wait(lambda: "CCD_DIRECTORY_LOCATION" in seen and "CCD_DIRECTORY_TOGGLE" in seen)
        conn.send(new_vector("Text", CCD, "CCD_DIRECTORY_LOCATION", [("LOCATION", str(folder))]))
        wait(lambda: seen["CCD_DIRECTORY_LOCATION"].get("LOCATION") == str(folder))
        conn.send(new_vector("Switch", CCD, "CCD_DIRECTORY_TOGGLE", [("INDI_ENABLED", "On")]))
        wait(lambda: seen["CCD_DIRECTORY_TOGGLE"].get("INDI_ENABLED") == "On")
    finally:
        conn.close()


def test_indi_camera_exposures_are_classified_on_mqtt(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    require_indiserver()
    folder = tmp_path / "camera"
    folder.mkdir()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:200, 0:240]
    sky = 1200 + rng.normal(0, 30, (200, 240))
    blob = 20000 * np.exp(-(((xx - 120) / 25.0) ** 2 + ((yy - 100) / 12.0) ** 2))
    hdu = fits.PrimaryHDU(np.clip(sky + blob, 0, 65535).astype(np.uint16))
    hdu.header["PIXSIZE1"] = 3.8
    hdu.header["PIXSIZE2"] = 3.8
    hdu.writeto(folder / "exposure.fits")
    server = IndiServer(tmp_path / "indi")
    server.workdir.mkdir()
    server.start()
    collector = Collector(mosquitto)
    try:
        _point_simulator_at(server.port, folder)
        uri = f"indi://127.0.0.1:{server.port}/CCD%20Simulator"
        cfg = agent_config(
            tmp_path,
            tiny_bundle,
            mosquitto,
            sources=[{"uri": uri, "name": "cam", "indi": {"exposure_s": 0.1, "interval_s": 0.2}}],
        )
        config_path = write_config(tmp_path / "agent.yaml", cfg)
        with RunningAgent(config_path):

            def two(_: object) -> bool:
                return len(collector.on(T + "classifications")) >= 2

            assert collector.wait_for(two, 60), (tmp_path / "indi" / "indiserver.log").read_text()
    finally:
        collector.close()
        server.stop()
    bodies = [json.loads(m.payload) for m in collector.on(T + "classifications")]
    rgb = decode_file(folder / "exposure.fits", DecodeConfig())
    probs = expected_probabilities(rgb, tiny_bundle)
    refs = {b["frame_ref"] for b in bodies}
    assert len(refs) == len(bodies)  # each exposure is its own frame
    for body in bodies:
        assert body["source"] == "cam"
        assert body["frame_ref"].startswith(f"indi://127.0.0.1:{server.port}/CCD%20Simulator#CCD1@")
        assert body["class_id"] == int(np.argmax(probs))
        assert body["confidence"] == pytest.approx(float(np.max(probs)), abs=1e-5)


def test_a_lost_camera_is_an_error_and_a_stat_never_a_crash(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    """No INDI server at the URI: the agent runs, says so once on ``errors`` and in ``stats``."""
    from indi_server import free_port
    from jsonschema import Draft202012Validator

    from edge_agent.schemas import load_schema

    uri = f"indi://127.0.0.1:{free_port()}/CCD%20Simulator"
    cfg = agent_config(tmp_path, tiny_bundle, mosquitto, sources=[{"uri": uri, "name": "cam"}])
    collector = Collector(mosquitto)
    try:
        with RunningAgent(write_config(tmp_path / "agent.yaml", cfg)):

            def reported(_: object) -> bool:
                stats = [json.loads(m.payload) for m in collector.on(T + "stats")]
                return bool(collector.on(T + "errors")) and any(
                    s["sources"].get("cam", {}).get("last_error") for s in stats
                )

            assert collector.wait_for(reported, 60)
    finally:
        collector.close()
    errors = [json.loads(m.payload) for m in collector.on(T + "errors")]
    assert len(errors) == 1  # one message per distinct problem, not one per retry
    assert errors[0]["reason"] == "source_unavailable" and errors[0]["frame_ref"] == uri
    assert "is indiserver running?" in errors[0]["detail"]
    Draft202012Validator(load_schema("error")).validate(errors[0])
    stats = [json.loads(m.payload) for m in collector.on(T + "stats")][-1]
    Draft202012Validator(load_schema("stats")).validate(stats)
    assert stats["sources"]["cam"]["connected"] is False


def test_a_wide_field_from_the_camera_is_cut_out_and_classified_like_the_archive_path(
    tmp_path: Path,
    tiny_bundle: Path,
    mosquitto: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same uint16 wide field through the CCD simulator (mode: fields) and through
    ``edge-agent classify --sources``: the same galaxies at the same pixels with the same classes."""
    require_indiserver()
    from edge_agent.cli import main as agent_main
    from edge_agent.fields.synthetic import make_field, model_galaxy, write_fits

    folder = tmp_path / "camera"
    folder.mkdir()
    galaxies = [model_galaxy(r_e=8 + 3 * i, angle_deg=40 * i) for i in range(4)]
    field = make_field(galaxies, shape=(768, 768), n_stars=40, bands=1, noise=20.0, seed=11)
    path = write_fits(
        field, folder / "field.fits", "uint16", header_extra={"PIXSIZE1": 3.8, "PIXSIZE2": 3.8}
    )
    assert agent_main(["classify", "--bundle", str(tiny_bundle), "--sources", str(path)]) == 0
    archive = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = sorted(
        (round(b["cutout"]["x"]), round(b["cutout"]["y"]), b["class_id"])
        for b in archive
        if b["type"] == "classification"
    )
    assert len(want) >= 3

    server = IndiServer(tmp_path / "indi")
    server.workdir.mkdir()
    server.start()
    collector = Collector(mosquitto)
    try:
        _point_simulator_at(server.port, folder)
        uri = f"indi://127.0.0.1:{server.port}/CCD%20Simulator"
        source = {"uri": uri, "name": "cam", "mode": "fields", "indi": {"exposure_s": 0.1}}
        cfg = agent_config(tmp_path, tiny_bundle, mosquitto, sources=[source])
        with RunningAgent(write_config(tmp_path / "agent.yaml", cfg)):

            def one_frame(_: object) -> bool:
                summaries = [json.loads(m.payload) for m in collector.on(T + "summaries")]
                if not summaries:
                    return False
                ref = summaries[0]["frame_ref"]
                got = [
                    b
                    for b in (json.loads(m.payload) for m in collector.on(T + "classifications"))
                    if b["frame_ref"] == ref
                ]
                return len(got) == summaries[0]["galaxies_classified"]

            assert collector.wait_for(one_frame, 90), (
                tmp_path / "indi" / "indiserver.log"
            ).read_text()
    finally:
        collector.close()
        server.stop()
    summary = json.loads(collector.on(T + "summaries")[0].payload)
    assert summary["source"] == "cam" and summary["width"] == 768 and summary["bands"] == 1
    assert summary["frame_ref"].startswith(f"indi://127.0.0.1:{server.port}/")
    got = sorted(
        (round(b["cutout"]["x"]), round(b["cutout"]["y"]), b["class_id"])
        for b in (json.loads(m.payload) for m in collector.on(T + "classifications"))
        if b["frame_ref"] == summary["frame_ref"]
    )
    assert got == want
