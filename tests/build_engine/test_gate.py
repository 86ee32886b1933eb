"""The accuracy gate: deltas computed right, a worse candidate refused, a small set refused,
and a decision taken on the paired interval rather than on the point estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from build_engine.errors import AccuracyGateError, GateDataError, UsageError
from build_engine.gate import describe, enforce, evaluate, predict
from build_engine.images import LabelledBatch

SMALL = 1  # min_images for the 24-image set; the default minimum is tested on its own


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
    result = evaluate(tiny_onnx, tiny_onnx, self_labelled, min_images=SMALL, threshold_points=50)
    assert result.reference_top1 == 1.0 and result.candidate_top1 == 1.0
    assert result.delta_points == 0.0 and result.agreement == 1.0
    assert result.passed and result.images == 24
    assert (result.both_correct, result.candidate_only_correct) == (24, 0)
    assert result.reference_only_correct == 0
    assert result.interval_low_points is not None and result.interval_low_points < 0
    assert result.interval_high_points is not None and result.interval_high_points > 0
    enforce(result, "int8")


def test_worse_candidate_is_refused(
    tiny_onnx: Path, self_labelled: LabelledBatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    cls = int(np.bincount(self_labelled.labels, minlength=10).argmin())
    _always_class(tiny_onnx, broken, cls)
    result = evaluate(tiny_onnx, broken, self_labelled, threshold_points=1.0, min_images=SMALL)
    share = float(np.mean(self_labelled.labels == cls))
    assert result.candidate_top1 == pytest.approx(share)
    assert result.delta_points == pytest.approx((1.0 - share) * 100, abs=1e-3)
    assert result.agreement == pytest.approx(share)
    assert not result.passed
    assert result.reference_only_correct == round(24 * (1 - share))
    assert result.finding is not None and result.finding.startswith("not shown")
    with pytest.raises(AccuracyGateError, match="--fallback fp16") as info:
        enforce(result, "int8")
    assert "\n" not in str(info.value) and "REFUSED" in describe(result, "int8")


def test_negative_threshold_refuses_even_an_equal_model(
    tiny_onnx: Path, self_labelled: LabelledBatch
) -> None:
    result = evaluate(tiny_onnx, tiny_onnx, self_labelled, threshold_points=-1.0, min_images=1)
    assert not result.passed


def test_empty_gate_set_is_an_error(tiny_onnx: Path) -> None:
    empty = LabelledBatch(np.zeros((0, 3, 64, 64), np.float32), np.zeros(0, np.int64), [], "none")
    with pytest.raises(GateDataError, match="no held-out images"):
        evaluate(tiny_onnx, tiny_onnx, empty)


def test_a_gate_set_below_the_minimum_is_refused_as_a_usage_error(
    tiny_onnx: Path, self_labelled: LabelledBatch
) -> None:
    """Ten images once passed a 1-point gate: one image is ten points. Now refused (exit 2)."""
    ten = LabelledBatch(self_labelled.images[:10], self_labelled.labels[:10], [], "ten")
    with pytest.raises(UsageError, match="at least 200 held-out images, got 10"):
        evaluate(tiny_onnx, tiny_onnx, ten)
    with pytest.raises(UsageError, match="at least 25 held-out images, got 24"):
        evaluate(tiny_onnx, tiny_onnx, self_labelled, min_images=25)


def _scripted(
    monkeypatch: pytest.MonkeyPatch, n: int, lost: int, won: int, wrong_both: int = 0
) -> LabelledBatch:
    """A gate set of ``n`` images whose predictions are scripted: the candidate loses ``lost``
    images the reference gets right and wins ``won`` it gets wrong; both miss ``wrong_both``."""
    import build_engine.gate as gate

    labels = np.zeros(n, dtype=np.int64)
    ref = labels.copy()
    cand = labels.copy()
    cand[:lost] = 1
    ref[lost : lost + won] = 1
    ref[lost + won : lost + won + wrong_both] = 2
    cand[lost + won : lost + won + wrong_both] = 2

    def scripted(path: Path, images: np.ndarray, **_: object) -> np.ndarray:
        return ref if path.name == "ref.onnx" else cand

    monkeypatch.setattr(gate, "predict", scripted)
    return LabelledBatch(np.zeros((n, 3, 2, 2), np.float32), labels, [], "scripted")


@pytest.mark.parametrize(
    ("n", "lost", "won", "passed", "low"),
    [
        (200, 0, 0, True, -0.86),  # 200 images can pass a 1-point gate only by agreeing fully
        (200, 1, 1, False, -1.44),  # the same point estimate (0), but a loss > 1 point possible
        (500, 2, 2, True, -0.74),
        (500, 0, 4, True, 0.06),
        (1000, 8, 2, False, -1.15),  # a 0.6-point drop with its uncertainty
    ],
)
def test_the_decision_follows_the_paired_interval_not_the_point_estimate(
    monkeypatch: pytest.MonkeyPatch, n: int, lost: int, won: int, passed: bool, low: float
) -> None:
    data = _scripted(monkeypatch, n, lost, won, wrong_both=n * 4 // 10)  # top-1 about 60%
    result = evaluate(Path("ref.onnx"), Path("cand.onnx"), data, threshold_points=1.0)
    assert result.delta_points == pytest.approx((lost - won) / n * 100)
    assert (result.reference_only_correct, result.candidate_only_correct) == (lost, won)
    assert result.passed is passed
    assert result.interval_low_points == pytest.approx(low, abs=0.01)
    assert result.finding is not None
    assert result.finding.startswith("shown" if passed else "not shown")
    assert f"{lost + won} discordant" in result.finding
    assert result.rule is not None and "-1 points" in result.rule
