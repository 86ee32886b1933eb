"""Calibrated confidence in the agent: the bundle's temperature reaches the wire, and says so.

A bundle whose manifest carries ``calibration`` (temperature scaling fitted by galaxy-train)
publishes ``softmax(logits / T)`` with ``calibrated: true``; one without it publishes the raw
softmax with ``calibrated: false``. Payloads are checked against the closed JSON Schemas.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_testkit import drop_file, galaxy_like, make_bundle
from jsonschema import Draft202012Validator
from pipeline_testkit import FolderPipeline

from edge_agent.agent import calibration_info
from edge_agent.contract.manifest import (
    MANIFEST_NAME,
    Calibration,
    load_bundle,
    read_manifest,
    write_manifest,
)
from edge_agent.contract.preprocess import preprocess_frame
from edge_agent.payloads import status_payload
from edge_agent.results import ResultError, classify, softmax
from edge_agent.schemas import closed_schema, load_schema

CALIBRATION = Calibration(
    temperature=2.0,
    fitted_on="validation split of labels.csv",
    images=100,
    ece_before=0.21,
    ece_after=0.04,
    test_images=100,
    test_ece_before=0.2,
    test_ece_after=0.06,
)


def assert_valid(kind: str, payload: object) -> None:
    validator = Draft202012Validator(
        closed_schema(load_schema(kind)), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    found = sorted(f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(payload))
    assert not found, "\n".join(found)


def calibrated_bundle(bundle_dir: Path, calibration: Calibration = CALIBRATION) -> Path:
    manifest = make_bundle(bundle_dir, seed=3)
    write_manifest(bundle_dir, manifest.model_copy(update={"calibration": calibration}))
    return bundle_dir


def logits_of(rgb: np.ndarray, bundle: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"input": preprocess_frame(rgb)[None]})[0]
    return np.asarray(out, dtype=np.float64)


def test_classify_divides_by_the_temperature_and_flags_it() -> None:
    logits = np.array([[4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0]])
    (raw,) = classify(logits, uncertain_below=0.5)
    (cal,) = classify(logits, uncertain_below=0.5, temperature=2.0)
    assert not raw.calibrated and cal.calibrated
    assert cal.probabilities == pytest.approx(tuple(softmax(logits / 2.0)[0]))
    assert cal.class_id == raw.class_id == 0  # the label never changes
    assert cal.confidence < raw.confidence  # T > 1 softens
    # uncertain follows the calibrated confidence: 0.86 raw is certain, 0.53 calibrated is not
    (strict,) = classify(logits, uncertain_below=0.6, temperature=2.0)
    assert raw.confidence > 0.6 > strict.confidence and strict.uncertain
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ResultError, match="temperature"):
            classify(logits, uncertain_below=0.5, temperature=bad)


def test_the_manifest_round_trips_its_calibration(tmp_path: Path) -> None:
    bundle = calibrated_bundle(tmp_path / "b")
    assert read_manifest(bundle).calibration == CALIBRATION
    assert load_bundle(bundle).calibration == CALIBRATION
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    assert raw["calibration"]["method"] == "temperature"
    assert raw["calibration"]["temperature"] == 2.0
    plain = make_bundle(tmp_path / "plain")
    assert plain.calibration is None and read_manifest(tmp_path / "plain").calibration is None


def test_a_bundle_with_t_2_publishes_softened_calibrated_probabilities(tmp_path: Path) -> None:
    bundle = calibrated_bundle(tmp_path / "bundle")
    rgb = galaxy_like(11)
    _ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    with FolderPipeline(tmp_path, bundle) as rig:
        drop_file(rig.inbox, "g.png", png.tobytes())
        rig.wait(classified=1, errors=0)
        (body,) = rig.messages("classifications")
    assert_valid("classification", body)
    logits = logits_of(rgb, bundle)
    assert body["calibrated"] is True
    assert body["probabilities"] == pytest.approx(softmax(logits / 2.0)[0].tolist(), abs=2e-6)
    assert body["confidence"] == pytest.approx(float(softmax(logits / 2.0)[0].max()), abs=2e-6)
    assert body["confidence"] < float(softmax(logits)[0].max())  # softened, same label
    assert body["class_id"] == int(logits.argmax())


def test_a_bundle_without_calibration_loads_and_publishes_raw_flagged_uncalibrated(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    rgb = galaxy_like(12)
    _ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    with FolderPipeline(tmp_path, tiny_bundle) as rig:
        drop_file(rig.inbox, "g.png", png.tobytes())
        rig.wait(classified=1, errors=0)
        (body,) = rig.messages("classifications")
    assert_valid("classification", body)
    assert body["calibrated"] is False
    raw = softmax(logits_of(rgb, tiny_bundle))[0]
    assert body["probabilities"] == pytest.approx(raw.tolist(), abs=2e-6)


def test_the_birth_says_how_the_model_is_calibrated(tmp_path: Path) -> None:
    manifest = read_manifest(calibrated_bundle(tmp_path / "b"))
    info = calibration_info(manifest)
    assert info == {
        "method": "temperature",
        "temperature": 2.0,
        "fitted_on": "validation split of labels.csv",
        "images": 100,
        "ece_before": 0.21,
        "ece_after": 0.04,
    }
    model = {"name": "m", "sha256": "a" * 64, "precision": "fp32", "calibration": info}
    birth = status_payload(state="online", device_id="d1", agent_version="0", model=model, at=0.0)
    assert_valid("status", birth)
    plain = {**model, "calibration": calibration_info(make_bundle(tmp_path / "plain"))}
    assert plain["calibration"] is None
    assert_valid("status", status_payload(state="offline", device_id="d1", agent_version="0",
                                          model=plain))  # fmt: skip
