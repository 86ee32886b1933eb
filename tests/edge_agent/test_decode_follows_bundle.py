"""The agent decodes deep data the way the bundle's model was trained (manifest ``decode``).

A 16-bit or FITS frame stretched otherwise is another image, so the stretch and the FITS HDU and
bands are the bundle's, not the agent config's: a config that states other ones is refused with
one line (exit 2) at start, in ``edge-agent check`` and in ``edge-agent classify``; a bundle
without ``decode`` (built before it travelled) decodes with the defaults, which every stage used
then; a reload to another bundle follows that bundle's spec, also for frames already decoded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_testkit import RunningAgent, agent_config, make_bundle, write_config
from astropy.io import fits
from mqtt_broker import MosquittoBroker
from pipeline_testkit import FolderPipeline

from edge_agent import pipeline_prepare as prepare_module
from edge_agent.backends.factory import create_backend
from edge_agent.cli import main
from edge_agent.contract import exit_codes
from edge_agent.contract.decode import decode_bytes
from edge_agent.contract.decode_config import (
    ALL_FORMATS,
    DecodeConfig,
    DecodeSpec,
    FitsConfig,
    StretchConfig,
)
from edge_agent.contract.manifest import load_bundle
from edge_agent.pipeline import Prepared
from edge_agent.sources.base import Frame

LINEAR = DecodeSpec(stretch=StretchConfig(method="linear"), fits=FitsConfig(hdu=1))
RNG = np.random.default_rng(5)


def _deep_files() -> dict[str, bytes]:
    sky = RNG.normal(0, 1, (40, 48))
    sky[16:24, 20:28] += 15
    ok, png16 = cv2.imencode(".png", np.clip(500 + 60 * sky, 0, None).astype(np.uint16))
    assert ok
    buf = io.BytesIO()
    # HDU 0 holds a decoy image: the spec's fits.hdu=1 picks the second one.
    fits.HDUList(
        [fits.PrimaryHDU(np.zeros((40, 48), np.float32)), fits.ImageHDU(sky.astype(np.float32))]
    ).writeto(buf)
    return {"faint16.png": png16.tobytes(), "two-hdus.fits": buf.getvalue()}


def _bundle_with(path: Path, decode: DecodeSpec | None) -> Path:
    """The tiny bundle with ``decode`` in its manifest, or an old one (format 2, no field)."""
    make_bundle(path)
    raw = json.loads((path / "manifest.json").read_text())
    if decode is None:
        raw.pop("decode")
        raw["format_version"] = 2
    else:
        raw["decode"] = decode.model_dump(mode="json")
    (path / "manifest.json").write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle_with(tmp_path_factory.mktemp("linear") / "bundle", LINEAR)


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle_with(tmp_path_factory.mktemp("old") / "bundle", None)


def _agent_pixels(
    tmp: Path, bundle: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> dict[str, np.ndarray]:
    """What the running pipeline's decoder returned for each file."""
    seen: dict[bytes, np.ndarray] = {}
    real = prepare_module.decode_bytes

    def watched(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        image = real(data, *args, **kwargs)  # type: ignore[arg-type]
        seen[bytes(data)] = image.copy()
        return image

    monkeypatch.setattr(prepare_module, "decode_bytes", watched)
    with FolderPipeline(tmp, bundle, formats=ALL_FORMATS) as rig:
        for name, data in files.items():
            (rig.inbox / name).write_bytes(data)
        rig.wait(classified=len(files), errors=0)
    return {name: seen[data] for name, data in files.items()}


def test_the_agent_decodes_deep_frames_as_the_bundle_says(
    tmp_path: Path, linear_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _deep_files()
    assert load_bundle(linear_bundle).decode == LINEAR
    got = _agent_pixels(tmp_path, linear_bundle, files, monkeypatch)
    for name, data in files.items():
        bundle_way = decode_bytes(data, LINEAR.decoder())
        np.testing.assert_array_equal(got[name], bundle_way, err_msg=name)
        # Teeth: the agent's config defaults (asinh, first image HDU) give other pixels.
        assert np.abs(bundle_way.astype(int) - decode_bytes(data, DecodeConfig())).max() > 40


def test_an_old_bundle_without_decode_uses_the_defaults(
    tmp_path: Path, old_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_bundle(old_bundle).decode == DecodeSpec()
    files = _deep_files()
    got = _agent_pixels(tmp_path, old_bundle, files, monkeypatch)
    for name, data in files.items():
        np.testing.assert_array_equal(got[name], decode_bytes(data, DecodeConfig()), err_msg=name)


def _config(tmp: Path, bundle: Path, decode: dict[str, object]) -> Path:
    return write_config(tmp / "agent.yaml", agent_config(tmp, bundle, None, decode=decode))


MISMATCH = (
    "decode.stretch.method is 'asinh' in the agent config but 'linear' in the bundle {bundle}"
)


def test_a_config_contradicting_the_bundle_is_refused_by_check(
    tmp_path: Path, linear_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, linear_bundle, {"stretch": {"method": "asinh"}, "max_bytes": 10**6})
    assert main(["check", str(cfg), "--no-broker"]) == exit_codes.USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert MISMATCH.format(bundle=linear_bundle) in line
    assert "remove decode.stretch from the agent config" in line


def test_a_config_contradicting_the_bundle_is_refused_at_start(
    tmp_path: Path, linear_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, linear_bundle, {"stretch": {"method": "asinh"}})
    assert main(["run", "--config", str(cfg)]) == exit_codes.USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert MISMATCH.format(bundle=linear_bundle) in line


def test_a_fits_setting_contradicting_the_bundle_names_it(
    tmp_path: Path, linear_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, linear_bundle, {"fits": {"hdu": 0}})
    frame = tmp_path / "f.fits"
    frame.write_bytes(_deep_files()["two-hdus.fits"])
    assert main(["classify", str(frame), "--bundle", str(linear_bundle), "--config", str(cfg)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "decode.fits" in x]
    assert "decode.fits.hdu is 0 in the agent config but 1 in the bundle" in line
    assert "remove decode.fits" in line


def test_a_config_stating_the_bundles_settings_and_limits_is_accepted(
    tmp_path: Path, linear_bundle: Path, old_bundle: Path
) -> None:
    """Backwards compatible: decode.stretch/fits still parse, and agree here."""
    stated = {"stretch": LINEAR.stretch.model_dump(), "fits": {"hdu": 1}, "max_bytes": 10**6}
    (tmp_path / "a").mkdir()
    cfg = _config(tmp_path / "a", linear_bundle, stated)
    assert main(["check", str(cfg), "--no-broker"]) == exit_codes.OK
    (tmp_path / "b").mkdir()
    old_style = _config(tmp_path / "b", old_bundle, {"stretch": {"method": "asinh"}})
    assert main(["check", str(old_style), "--no-broker"]) == exit_codes.OK


def test_a_reload_follows_the_new_bundles_decoding_spec(
    tmp_path: Path, tiny_bundle: Path, linear_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a swap to another bundle (what SIGHUP does), new frames and frames decoded before
    it but still waiting for a batch are decoded with the new bundle's spec."""
    png = _deep_files()["faint16.png"]
    default_way, linear_way = decode_bytes(png, DecodeConfig()), decode_bytes(png, LINEAR.decoder())
    after_swap: list[np.ndarray] = []
    real = prepare_module.decode_bytes

    def watched(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        image = real(data, *args, **kwargs)  # type: ignore[arg-type]
        after_swap.append(image.copy())
        return image

    with FolderPipeline(tmp_path, tiny_bundle, formats=ALL_FORMATS) as rig:
        pipeline = rig.pipeline
        assert pipeline.decode.spec == DecodeSpec()
        # A frame decoded before the reload, still waiting for its batch.
        queued = Prepared(
            Frame("inbox", "queued.png", data=png),
            decode_bytes(png, pipeline.decode),
            None,
            None,
            0.0,
            0.0,
            decoded_with=pipeline.decode.spec,
        )
        np.testing.assert_array_equal(queued.image, default_way)
        new_backend = create_backend(linear_bundle, load_bundle(linear_bundle))
        old = pipeline.swap(rig.config.model_copy(update={"bundle": linear_bundle}), new_backend)
        assert pipeline.wait_swapped(10.0)
        old.close()
        rig.backend = new_backend  # closed by the rig
        assert pipeline.decode.spec == LINEAR
        monkeypatch.setattr(prepare_module, "decode_bytes", watched)
        pipeline.run_batch([queued])
        np.testing.assert_array_equal(queued.image, linear_way)  # decoded again, the new way
        assert queued.decoded_with == LINEAR
        (rig.inbox / "after.png").write_bytes(png)
        rig.wait(classified=2, errors=0)
    assert len(after_swap) == 2  # the queued frame once more, then the new file
    for image in after_swap:
        np.testing.assert_array_equal(image, linear_way)


@pytest.mark.mqtt
def test_sighup_to_a_bundle_decoded_otherwise_follows_it_or_refuses_a_contradicting_config(
    tmp_path: Path, tiny_bundle: Path, linear_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    raw = agent_config(tmp_path, tiny_bundle, mosquitto)
    cfg = write_config(tmp_path / "agent.yaml", raw)
    with RunningAgent(cfg) as agent:
        assert agent.pipeline.decode.spec == DecodeSpec()
        # The new bundle's model was trained on linearly stretched pixels; the config insists
        # on asinh: refused, the agent keeps running the old bundle.
        write_config(
            cfg, {**raw, "bundle": str(linear_bundle), "decode": {"stretch": {"method": "asinh"}}}
        )
        assert agent.reload() is False
        assert agent.config.bundle == tiny_bundle
        # Without the contradiction the reload goes through and decodes as the new bundle says.
        write_config(cfg, {**raw, "bundle": str(linear_bundle)})
        assert agent.reload() is True
        assert agent.pipeline.decode.spec == LINEAR
