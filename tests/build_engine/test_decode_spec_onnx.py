"""build-engine and the decoding spec of an ``--onnx`` file (issue 8, one decoder).

A file exported by build-engine (or galaxy-train qat) records the decoding spec its model was
trained with (``galaxy_edge.decode``); it goes into the manifest, and a ``--decode-spec`` that
contradicts it is refused like a contradicting ``--preprocess-spec``. A file without it was
exported before the spec travelled, when every stage decoded with the defaults: it gets them,
or ``--decode-spec``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from build_engine.cli import EXIT_OK, EXIT_USAGE, main
from build_engine.onnx_metadata import read_metadata, write_metadata
from edge_agent.contract.decode_config import DecodeSpec, FitsConfig, StretchConfig
from edge_agent.contract.manifest import TrainingProvenance, load_bundle

LINEAR = DecodeSpec(stretch=StretchConfig(method="linear"), fits=FitsConfig(bands=[2, 1, 0]))


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    rc = main([str(a) for a in (*args, "--backend", "onnxruntime", "--no-progress")])
    return rc, capsys.readouterr().err


def _decode_json(tmp_path: Path, spec: DecodeSpec) -> Path:
    path = tmp_path / "decode.json"
    path.write_text(spec.model_dump_json())
    return path


@pytest.fixture
def linear_onnx(tiny_onnx: Path, tmp_path: Path) -> Path:
    """The tiny model, its metadata saying it was trained on linearly stretched pixels."""
    path = tmp_path / "linear.onnx"
    shutil.copy(tiny_onnx, path)
    meta = read_metadata(onnx.load(str(path)))
    assert meta.spec is not None
    write_metadata(path, meta.model_name, TrainingProvenance(), meta.parameters, meta.spec, LINEAR)
    return path


def test_the_onnx_files_decoding_spec_goes_into_the_manifest(
    linear_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    rc, err = _run(capsys, "--onnx", linear_onnx, "--out", out)
    assert rc == EXIT_OK, err
    assert load_bundle(out).decode == LINEAR
    assert "decoding spec from the ONNX file's metadata: stretch linear" in err


def test_a_contradicting_decode_spec_is_refused(
    linear_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    rc, err = _run(
        capsys,
        "--onnx",
        linear_onnx,
        "--out",
        out,
        "--decode-spec",
        _decode_json(tmp_path, DecodeSpec()),
    )
    assert rc == EXIT_USAGE and not out.exists()
    assert "records the decoding spec it was trained with" in err and "drop the option" in err


def test_an_onnx_file_without_it_gets_the_defaults_or_the_option(
    bare_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    size = onnx.load(str(bare_onnx)).graph.input[0].type.tensor_type.shape.dim[2].dim_value
    spec.write_text(f'{{"input_size": {size}, "crop": "none"}}')
    out = tmp_path / "old"
    rc, err = _run(capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", spec)
    assert rc == EXIT_OK, err
    assert load_bundle(out).decode == DecodeSpec()
    assert "decoding spec from the defaults (no galaxy_edge.decode in" in err
    out = tmp_path / "given"
    given = _decode_json(tmp_path, LINEAR)
    rc, err = _run(
        capsys, "--onnx", bare_onnx, "--out", out, "--preprocess-spec", spec, "--decode-spec", given
    )
    assert rc == EXIT_OK, err
    assert load_bundle(out).decode == LINEAR
    # --if-stale notices a changed explicit decoding spec
    other = tmp_path / "other.json"
    other.write_text(DecodeSpec().model_dump_json())
    rc = main(["--check", str(out), "--onnx", str(bare_onnx), "--preprocess-spec", str(spec),
               "--decode-spec", str(other)])  # fmt: skip
    assert rc != EXIT_OK and "decoding spec" in capsys.readouterr().out


def test_decode_spec_is_refused_with_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    given = _decode_json(tmp_path, LINEAR)
    rc, err = _run(capsys, "--checkpoint", run, "--out", tmp_path / "b", "--decode-spec", given)
    assert rc == EXIT_USAGE and "a checkpoint carries the decoding spec" in err


def test_compare_decodes_labelled_images_as_the_models_do(
    linear_onnx: Path, tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2
    import numpy as np

    from build_engine.compare import labelled_frames
    from build_engine.compare import main as compare_main
    from edge_agent.contract.decode import decode_file

    (tmp_path / "merging").mkdir()
    deep = tmp_path / "merging" / "deep.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(deep), (300 + 30 * rng.random((20, 30))).astype(np.uint16))
    (frame,) = labelled_frames(tmp_path, 1, LINEAR)
    np.testing.assert_array_equal(frame, decode_file(deep, LINEAR.decoder()))
    assert compare_main([str(linear_onnx), str(linear_onnx), "--images", str(tmp_path)]) == 0
    capsys.readouterr()
    rc = compare_main([str(linear_onnx), str(tiny_onnx), "--images", str(tmp_path)])
    assert rc == EXIT_USAGE and "decode image files differently" in capsys.readouterr().err
