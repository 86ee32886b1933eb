"""One decoder (issue 8): the same file gives the same pixels in the agent, in the labelled-data
reader that training and ``evaluate`` use, and in build-engine's calibration and gate loader.

The agent's pixels are taken from its running pipeline (its ``decode_bytes`` call, watched), not
re-derived here. Before this was fixed, a faint 16-bit PNG read as mean 1.9 for training and
126.6 on the device, and FITS files could not be trained on at all.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits
from pipeline_testkit import FolderPipeline

from build_engine.images import load_calibration_and_gate, load_gate_only
from edge_agent import pipeline_prepare as prepare_module
from edge_agent.contract.decode import decode_bytes
from edge_agent.contract.decode_config import ALL_FORMATS, DecodeConfig
from edge_agent.contract.labelled_data import open_labelled, read_image_rgb
from edge_agent.contract.preprocess import DEFAULT_SPEC, preprocess_frame

RNG = np.random.default_rng(11)
SKY = RNG.normal(0, 1, (48, 64))
SKY[20:28, 28:36] += 12  # a galaxy-ish blob on noise


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _fits(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    faint16 = np.clip(300 + 40 * SKY, 0, None).astype(np.uint16)  # a few hundred of 65535
    assert float(faint16.max()) < 1024
    rgb8 = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    files = {
        "rgb8.png": _png(rgb8),
        "faint16.png": _png(faint16),
        "float32.fits": _fits((SKY * 1e-3).astype(np.float32)),
        "uint16-bzero.fits": _fits((40000 + 50 * SKY).astype(np.uint16)),
    }
    ok, bmp = cv2.imencode(".bmp", rgb8)
    ok2, webp = cv2.imencode(".webp", rgb8, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and ok2
    files["rgb8.bmp"], files["rgb8.webp"] = bmp.tobytes(), webp.tobytes()
    return files


def test_uint16_fits_is_stored_with_bzero() -> None:
    header = fits.Header.fromstring(_files()["uint16-bzero.fits"][:2880].decode("ascii"))
    assert header["BITPIX"] == 16 and header["BZERO"] == 32768


def test_every_stage_sees_the_agents_pixels(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    agent_pixels: dict[bytes, np.ndarray] = {}
    real = prepare_module.decode_bytes

    def watched(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        image = real(data, *args, **kwargs)  # type: ignore[arg-type]
        agent_pixels[bytes(data)] = image.copy()
        return image

    monkeypatch.setattr(prepare_module, "decode_bytes", watched)
    (tmp_path / "agent").mkdir()
    with FolderPipeline(tmp_path / "agent", tiny_bundle, formats=ALL_FORMATS) as rig:
        for name, data in files.items():
            (rig.inbox / name).write_bytes(data)
        rig.wait(classified=len(files), errors=0)
        assert set(rig.by_name("classifications")) == set(files)
    assert len(agent_pixels) == len(files)

    folder = tmp_path / "labelled"
    (folder / "merging").mkdir(parents=True)
    for name, data in files.items():
        (folder / "merging" / name).write_bytes(data)
    training_set = open_labelled(folder)  # what galaxy-train and evaluate read
    assert len(training_set) == len(files)
    gate = load_gate_only(folder, len(files), DEFAULT_SPEC)  # build-engine's gate
    calib, held_out = load_calibration_and_gate(folder, 3, 3, spec=DEFAULT_SPEC)
    build_batches = [gate, calib, held_out]
    for i in range(len(training_set)):
        path = Path(training_set.ref(i))
        expected = agent_pixels[files[path.name]]
        pixels, _label = training_set[i]
        np.testing.assert_array_equal(pixels, expected, err_msg=f"training reader: {path.name}")
        np.testing.assert_array_equal(read_image_rgb(path), expected, err_msg=path.name)
        model_input = preprocess_frame(expected, DEFAULT_SPEC, "RGB")
        for batch in build_batches:
            if str(path) in batch.refs:
                got = batch.images[batch.refs.index(str(path))]
                np.testing.assert_array_equal(got, model_input, err_msg=f"build: {path.name}")
    assert sum(len(b) for b in build_batches) == 2 * len(files)
    faint = agent_pixels[files["faint16.png"]]
    assert float(faint.mean()) > 50  # stretched as the device sees it, not shifted to ~1


def test_evaluate_and_training_inputs_are_the_agents(tmp_path: Path) -> None:
    """training.data.PreprocessedImages (train and evaluate) over the same reader."""
    pytest.importorskip("torch")
    from training.data import PreprocessedImages

    files = _files()
    (tmp_path / "merging").mkdir()
    for name, data in files.items():
        (tmp_path / "merging" / name).write_bytes(data)
    images = open_labelled(tmp_path)
    dataset = PreprocessedImages(images, np.arange(len(images)), DEFAULT_SPEC)
    for i in range(len(dataset)):
        tensor, _label = dataset[i]
        path = Path(images.ref(i))
        agent_view = preprocess_frame(
            decode_bytes(files[path.name], DecodeConfig()), DEFAULT_SPEC, "RGB"
        )
        np.testing.assert_array_equal(tensor.numpy(), agent_view, err_msg=path.name)
