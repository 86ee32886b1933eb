"""The accuracy gate: deltas computed right, and a worse candidate refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from build_engine.errors import AccuracyGateError
from build_engine.gate import describe, enforce, evaluate, predict
from build_engine.images import LabelledBatch


@pytest.fixture(scope="module")
def self_labelled(tiny_onnx: Path) -> LabelledBatch:
    """Images labelled with the reference's own predictions: the reference scores 100 %."""
    images = np.random.default_rng(3).uniform(-1, 1, (24, 3, 64, 64)).astype(np.float32)
    return LabelledBatch(
        images=images, labels=predict(tiny_onnx, images), refs=[], source="synthetic"
    )


def _always_class(src: Path, dst: Path, cls: int) -> None:
    """A broken candidate: the classifier's bias drowns every input, so it always says ``cls``."""
    model = onnx.load(str(src))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    inits = {i.name: i for i in model.graph.initializer}
    bias = numpy_helper.to_array(inits[gemm.input[2]]).copy()
    bias[:] = -1e4
    bias[cls] = 1e4
    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(bias, gemm.input[2]))
    onnx.save(model, str(dst))


def test_identical_models_pass_with_zero_delta(
    tiny_onnx: Path, self_labelled: LabelledBatch
) -> None:
    result = evaluate(tiny_onnx, tiny_onnx, self_labelled)
    assert result.reference_top1 == 1.0 and result.candidate_top1 == 1.0
    assert result.delta_points == 0.0 and result.agreement == 1.0
    assert result.passed and result.images == 24
    enforce(result, "int8")


def test_worse_candidate_is_refused(
    tiny_onnx: Path, self_labelled: LabelledBatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    cls = int(np.bincount(self_labelled.labels, minlength=10).argmin())
    _always_class(tiny_onnx, broken, cls)
    result = evaluate(tiny_onnx, broken, self_labelled, threshold_points=1.0)
    share = float(np.mean(self_labelled.labels == cls))
    assert result.candidate_top1 == pytest.approx(share)
    assert result.delta_points == pytest.approx((1.0 - share) * 100, abs=1e-3)
    assert result.agreement == pytest.approx(share)
    assert not result.passed
    with pytest.raises(AccuracyGateError, match="--fallback fp16") as info:
        enforce(result, "int8")
    assert "\n" not in str(info.value) and "REFUSED" in describe(result, "int8")


def test_negative_threshold_refuses_even_an_equal_model(
    tiny_onnx: Path, self_labelled: LabelledBatch
) -> None:
    result = evaluate(tiny_onnx, tiny_onnx, self_labelled, threshold_points=-1.0)
    assert not result.passed


def test_empty_gate_set_is_an_error(tiny_onnx: Path) -> None:
    empty = LabelledBatch(np.zeros((0, 3, 64, 64), np.float32), np.zeros(0, np.int64), [], "none")
    with pytest.raises(AccuracyGateError, match="no held-out images"):
        evaluate(tiny_onnx, tiny_onnx, empty)
