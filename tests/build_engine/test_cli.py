"""build-engine end to end on this host: ONNX Runtime bundles, --check, --if-stale, INT8 and its
gate, and one-line errors that leave nothing behind."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from build_engine.cli import EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_STALE, EXIT_USAGE, main
from build_engine.device import probe
from build_engine.quantize import QuantizeReport
from build_engine.request import TRT_NOTICE
from edge_agent.contract.manifest import load_bundle, sha256_file

HAS_TRT = probe().tensorrt_version is not None
FAST_INT8 = ["--quantizer", "onnxruntime", "--calibration-method", "max"]
# The tiny labelled sets here are far below the gate's default minimum of 200 images; these
# tests exercise the plumbing, tests/build_engine/test_gate.py the gate's statistics.
SMALL_GATE = ["--gate-min-images", "1"]


# These tests are about the ONNX Runtime path (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("host_without_openvino")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT imports here: auto builds a plan")
def test_auto_without_tensorrt_writes_an_onnxruntime_bundle(
    tiny_onnx: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bundle"
    rc, stdout, stderr = run(capsys, "--onnx", tiny_onnx, "--out", out)
    assert rc == EXIT_OK, stderr
    assert stderr.splitlines().count(TRT_NOTICE) == 1
    manifest = load_bundle(out)
    assert (manifest.backend, manifest.precision, manifest.model_file) == (
        "onnxruntime",
        "fp32",
        "model.onnx",
    )
    assert manifest.model.name == "mobilevit_xxs"
    assert manifest.training.dataset == "synthetic"
    assert manifest.preprocess.input_size == 64
    assert manifest.source_onnx_sha256 == sha256_file(tiny_onnx) == manifest.files["model.onnx"]
    assert manifest.kernels is None and manifest.tensorrt is None
    assert "onnxruntime fp32 bundle of mobilevit_xxs" in stdout


@pytest.fixture(scope="module")
def built(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "bundle"
    assert (
        main(["--onnx", str(tiny_onnx), "--out", str(out), "--backend", "onnxruntime"]) == EXIT_OK
    )
    return out


def test_check_passes_then_catches_tampering(
    built: Path, tiny_onnx: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    rc, stdout, _ = run(capsys, "--check", built, "--onnx", tiny_onnx)
    assert rc == EXIT_OK and "valid for this device" in stdout
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    with open(copy / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    rc, stdout, _ = run(capsys, "--check", copy)
    assert rc == EXIT_STALE
    assert "sha256" in stdout and "does not match" in stdout


def test_check_against_another_model(built: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.onnx"
    model = onnx.load(str(built / "model.onnx"))
    model.doc_string = "a different file"
    onnx.save(model, str(other))
    rc, stdout, _ = run(capsys, "--check", built, "--onnx", other)
    assert rc == EXIT_STALE and "built from ONNX" in stdout


def test_if_stale_rebuilds_only_when_needed(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bundle"
    common = ["--onnx", tiny_onnx, "--out", out, "--backend", "onnxruntime"]
    assert run(capsys, *common)[0] == EXIT_OK
    before = (out / "manifest.json").read_bytes()
    rc, stdout, _ = run(capsys, *common, "--if-stale")
    assert rc == EXIT_OK and "up to date" in stdout
    assert (out / "manifest.json").read_bytes() == before
    rc, _, stderr = run(capsys, *common, "--precision", "fp16", "--if-stale")
    assert rc == EXIT_OK and "rebuilding: bundle precision is fp32, wanted fp16" in stderr
    assert load_bundle(out).precision == "fp16"
    assert load_bundle(out).quantization.method == "fp16-convert"


def test_int8_bundle_records_calibration_and_gate(
    tiny_onnx: Path, labelled_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "int8"
    rc, _, stderr = run(
        capsys,
        "--onnx",
        tiny_onnx,
        "--out",
        out,
        "--precision",
        "int8",
        "--calib-data",
        labelled_csv,
        "--calib-size",
        16,
        "--gate-size",
        12,
        "--gate-threshold",
        100,
        *FAST_INT8,
        *SMALL_GATE,
    )
    assert rc == EXIT_OK, stderr
    manifest = load_bundle(out)
    assert manifest.precision == "int8"
    q = manifest.quantization
    assert q.method == "qdq-onnxruntime" and q.calibration_images == 16
    assert set(q.excluded_ops) == {"LayerNormalization", "Softmax", "Add"}
    gate = manifest.accuracy_gate
    assert gate is not None and gate.images == 12 and gate.passed and gate.threshold_points == 100
    assert gate.min_images == 1 and gate.interval_level == 0.9 and gate.finding
    assert gate.both_correct is not None and gate.reference_only_correct is not None
    assert gate.interval_low_points is not None and gate.interval_high_points is not None
    assert gate.interval_low_points <= -gate.delta_points <= gate.interval_high_points
    assert "held-out" in gate.source and "calibration" in (q.calibration_source or "")
    model = onnx.load(str(out / "model.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10


def test_gate_refusal_is_an_error_and_writes_nothing(
    tiny_onnx: Path, labelled_csv: Path, no_leftovers: Path, capsys
) -> None:
    rc, _, stderr = run(
        capsys,
        "--onnx",
        tiny_onnx,
        "--out",
        no_leftovers / "b",
        "--precision",
        "int8",
        "--calib-data",
        labelled_csv,
        "--calib-size",
        8,
        "--gate-size",
        8,
        "--gate-threshold",
        -100,
        *FAST_INT8,
        *SMALL_GATE,
    )
    assert rc == EXIT_GATE
    assert stderr.splitlines()[-1].startswith("build-engine: error: accuracy gate REFUSED for int8")


@pytest.fixture(scope="module")
def self_labelled_csv(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images labelled with the FP32 model's own predictions: the reference scores 100 %."""
    import csv

    import cv2

    from build_engine.gate import predict
    from edge_agent.contract.preprocess import DEFAULT_SPEC, preprocess_batch

    root = tmp_path_factory.mktemp("self-labelled")
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(30)]
    labels = predict(
        tiny_onnx, preprocess_batch(frames, DEFAULT_SPEC.model_copy(update={"input_size": 64}))
    )
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
            cv2.imwrite(str(root / f"{i}.png"), frame[:, :, ::-1])
            writer.writerow([f"{i}.png", int(label)])
    return root / "labels.csv"


def test_fallback_builds_fp16_loudly_when_int8_is_refused(
    tiny_onnx: Path, self_labelled_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A broken quantizer (always class 0) must be caught by the gate and replaced by FP16."""
    import build_engine.quantize as quantize

    def broken_int8(src: Path, dst: Path, calib: np.ndarray, **_: object) -> QuantizeReport:
        model = onnx.load(str(src))
        gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
        init = next(i for i in model.graph.initializer if i.name == gemm.input[2])
        bias = np.full(10, -1e4, np.float32)
        bias[0] = 1e4
        init.CopyFrom(numpy_helper.from_array(bias, init.name))
        onnx.save(model, str(dst))
        return QuantizeReport("qdq-onnxruntime", quantize.EXCLUDED_OPS, len(calib), 1, 0)

    monkeypatch.setattr(quantize, "quantize_int8", broken_int8)
    out = tmp_path / "b"
    args = [
        "--onnx",
        tiny_onnx,
        "--out",
        out,
        "--precision",
        "int8",
        "--calib-data",
        self_labelled_csv,
        "--calib-size",
        10,
        "--gate-size",
        15,
        "--gate-threshold",
        40,
        *SMALL_GATE,
    ]
    rc, _, stderr = run(capsys, *args)
    assert rc == EXIT_GATE and not out.exists()
    rc, stdout, stderr = run(capsys, *args, "--fallback", "fp16")
    assert rc == EXIT_OK, stderr
    assert "INT8 REFUSED by the accuracy gate: building FP16 instead" in stderr
    manifest = load_bundle(out)
    assert manifest.precision == "fp16" and manifest.quantization.method == "fp16-convert"
    assert manifest.accuracy_gate is not None and manifest.accuracy_gate.passed
    assert manifest.accuracy_gate.reference_top1 == 1.0
    assert "onnxruntime fp16 bundle" in stdout


@pytest.fixture(scope="module")
def five_class_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("five") / "five.onnx"
    return _export_conv_classifier(path, classes=5, size=32, names=("input", "logits"))


def _export_conv_classifier(
    path: Path, *, classes: int, size: int, names: tuple[str, str], dynamic: bool = False
) -> Path:
    """A random Conv -> pool -> Linear classifier of ``classes`` outputs, exported to ``path``
    with its input and output tensors named ``names`` (batch dynamic when ``dynamic``)."""
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, classes),
    )
    axes = {names[0]: {0: "n"}, names[1]: {0: "n"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=axes,
        )
    return path


def _bad_inputs(
    tmp: Path, tiny: Path, five: Path, csv_path: Path
) -> dict[str, tuple[list[object], str]]:
    corrupt = tmp / "corrupt.onnx"
    corrupt.write_bytes(b"\x0a\xff" * 64)
    empty_csv = tmp / "empty.csv"
    empty_csv.write_text("file,label\n")
    flat = tmp / "flat"
    flat.mkdir()
    (flat / "x.jpg").write_bytes(b"")
    a_file = tmp / "a_file"
    a_file.write_text("x")
    int8 = ["--onnx", tiny, "--precision", "int8", *FAST_INT8]
    return {
        "missing onnx": (["--onnx", tmp / "absent.onnx"], "not found"),
        "corrupt onnx": (["--onnx", corrupt], "not a valid ONNX model"),
        "wrong classes": (["--onnx", five], "expected [N, 10]"),
        "missing checkpoint": (["--checkpoint", tmp / "no-run"], "no checkpoint here"),
        "int8 without data": (int8, "needs --calib-data"),
        "empty calibration set": ([*int8, *SMALL_GATE, "--calib-data", empty_csv], "empty"),
        "unlabelled calibration set": ([*int8, "--calib-data", flat], "no class sub-folders"),
        "missing calibration set": ([*int8, "--calib-data", tmp / "nope.csv"], "not found"),
        "gate set too small": (
            [*int8, "--calib-data", csv_path],
            "needs at least 200 held-out images, got 20",
        ),
        "dla on cpu bundle": (
            ["--onnx", tiny, "--dla-core", 0, "--backend", "onnxruntime"],
            "--dla-core",
        ),
        "fallback without int8": (["--onnx", tiny, "--fallback", "fp16"], "only applies"),
        "output under a file": (["--onnx", tiny, "--out", a_file / "bundle"], "is a file"),
    }


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("missing onnx", EXIT_USAGE),
        ("corrupt onnx", EXIT_ERROR),
        ("wrong classes", EXIT_ERROR),
        ("missing checkpoint", EXIT_USAGE),
        ("int8 without data", EXIT_USAGE),
        ("empty calibration set", EXIT_USAGE),
        ("unlabelled calibration set", EXIT_USAGE),
        ("missing calibration set", EXIT_USAGE),
        ("gate set too small", EXIT_USAGE),
        ("dla on cpu bundle", EXIT_USAGE),
        ("fallback without int8", EXIT_USAGE),
        ("output under a file", EXIT_USAGE),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    case: str,
    code: int,
    tiny_onnx: Path,
    five_class_onnx: Path,
    labelled_csv: Path,
    tmp_path: Path,
    no_leftovers: Path,
    capsys,
    monkeypatch,
) -> None:
    monkeypatch.setitem(sys.modules, "training.checkpoint", types.ModuleType("training.checkpoint"))
    data = tmp_path / "data"
    data.mkdir()
    argv, expected = _bad_inputs(data, tiny_onnx, five_class_onnx, labelled_csv)[case]
    if "--out" not in argv:
        argv = [*argv, "--out", no_leftovers / "bundle"]
    rc, stdout, stderr = run(capsys, *argv)
    assert rc == code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("build-engine: error:")]
    assert len(errors) == 1 and expected in errors[0], stderr
    assert errors[0] == stderr.splitlines()[-1]
    assert "Traceback" not in stderr and stdout == ""


@pytest.mark.skipif(HAS_TRT, reason="TensorRT imports here")
def test_tensorrt_backend_needs_the_device(tiny_onnx: Path, no_leftovers: Path, capsys) -> None:
    rc, _, stderr = run(
        capsys, "--onnx", tiny_onnx, "--out", no_leftovers / "b", "--backend", "tensorrt"
    )
    assert rc == EXIT_USAGE
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("build-engine: error: --backend tensorrt: TensorRT does not import")
    )


def test_check_of_nothing_is_stale(tmp_path: Path, capsys) -> None:
    rc, stdout, _ = run(capsys, "--check", tmp_path / "none")
    assert rc == EXIT_STALE and "no bundle manifest" in stdout


def test_contradictory_options_are_usage_errors(
    tiny_onnx: Path, no_leftovers: Path, capsys
) -> None:
    for argv in (
        ["--out", no_leftovers / "b"],
        ["--check", no_leftovers / "b", "--out", no_leftovers / "b"],
        ["--onnx", tiny_onnx, "--if-stale"],
        [],
    ):
        rc, _, stderr = run(capsys, *argv)
        assert rc == EXIT_USAGE, argv
        assert stderr.startswith("build-engine: error:") and stderr.count("\n") == 1


def _spec_json(tmp_path: Path, name: str = "spec", **overrides: object) -> Path:
    from edge_agent.contract.preprocess import DEFAULT_SPEC

    spec = DEFAULT_SPEC.model_copy(update={"input_size": 64, **overrides})
    path = tmp_path / f"{name}.json"
    path.write_text(spec.model_dump_json())
    return path


def test_onnx_without_a_spec_is_refused_unless_given(
    bare_onnx: Path, tmp_path: Path, no_leftovers: Path, capsys
) -> None:
    out = no_leftovers / "b"
    rc, _, stderr = run(capsys, "--onnx", bare_onnx, "--out", out)
    assert rc == EXIT_USAGE and not out.exists()
    assert "no preprocessing spec in its metadata" in stderr and "--preprocess-spec" in stderr
    spec = _spec_json(tmp_path, crop="none", scale=1 / 255, offset=0.0)
    rc, _, stderr = run(capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", spec)
    assert rc == EXIT_OK, stderr
    manifest = load_bundle(out)
    assert manifest.preprocess.crop == "none" and manifest.preprocess.offset == 0.0
    assert "preprocessing spec from --preprocess-spec" in stderr
    # --if-stale notices a changed explicit spec
    other = _spec_json(tmp_path, "other", crop="none", scale=1 / 255, offset=0.5)
    rc, stdout, _ = run(capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", other)
    assert rc == EXIT_OK
    rc, stdout, _ = run(
        capsys, "--check", out, "--onnx", bare_onnx, "--preprocess-spec", spec, "--backend", "auto"
    )
    assert rc == EXIT_STALE and "preprocessing spec" in stdout
    import shutil

    shutil.rmtree(out)


def test_a_spec_that_contradicts_the_model_is_refused(
    tiny_onnx: Path, bare_onnx: Path, tmp_path: Path, no_leftovers: Path, capsys
) -> None:
    out = no_leftovers / "b"
    other = _spec_json(tmp_path, crop="none")
    rc, _, stderr = run(capsys, "--onnx", tiny_onnx, "--out", out, "--preprocess-spec", other)
    assert rc == EXIT_USAGE and "records the spec it was trained with" in stderr
    wrong_size = _spec_json(tmp_path, "size", input_size=128)
    rc, _, stderr = run(capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", wrong_size)
    assert rc == EXIT_USAGE and "does not match the graph's input" in stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"input_size": 64, "crop": "diagonal"}')
    rc, _, stderr = run(capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", bad)
    assert rc == EXIT_USAGE and "crop" in stderr


def test_tensor_names_come_from_the_graph(tmp_path: Path, capsys) -> None:
    """A model whose tensors are not called input/logits: the manifest names them and the
    agent's backend runs it."""
    from edge_agent.backends.factory import create_backend

    path = _export_conv_classifier(
        tmp_path / "named.onnx", classes=10, size=64, names=("pixels", "scores"), dynamic=True
    )
    out = tmp_path / "bundle"
    spec = _spec_json(tmp_path)
    for precision in ("fp32", "fp16"):
        rc, _, stderr = run(
            capsys,
            "--onnx",
            path,
            "--out",
            out,
            "--preprocess-spec",
            spec,
            "--precision",
            precision,
        )
        assert rc == EXIT_OK, stderr
        manifest = load_bundle(out)
        assert (manifest.input_name, manifest.output_name) == ("pixels", "scores")
        frames = [np.zeros((50, 70, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)]
        assert create_backend(out, manifest).infer_frames(frames).logits.shape == (2, 10)
