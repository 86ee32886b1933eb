"""The decoding spec travels with the model: a model trained on 16-bit PNG and FITS files with a
non-default stretch gets, for the same deep file, the same input tensor from training's reader,
from build-engine's gate loader and from the running agent.

The run is real and small: galaxy-train's own loop (timm's tiny test network, two epochs on
generated 16-bit PNG and float FITS frames) with ``decode.stretch.method: linear``, then
``build-engine --checkpoint`` into an FP16 ONNX Runtime bundle gated on the same files, then the
agent's pipeline on the bundle; ``evaluate`` and ``calibrate`` read the same pixels as training. Before the spec travelled, training, the gate and the agent all
decoded with the defaults (asinh) whatever the run asked; the last assertions show those are
other tensors.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import cv2  # noqa: E402
from astropy.io import fits  # noqa: E402
from pipeline_testkit import FolderPipeline  # noqa: E402

import build_engine.pipeline as build_pipeline  # noqa: E402
import training.train as train_module  # noqa: E402
from build_engine.cli import main as build_main  # noqa: E402
from edge_agent import pipeline_prepare as prepare_module  # noqa: E402
from edge_agent.contract import exit_codes  # noqa: E402
from edge_agent.contract.decode import decode_bytes  # noqa: E402
from edge_agent.contract.decode_config import (  # noqa: E402
    ALL_FORMATS,
    DecodeConfig,
    DecodeSpec,
    StretchConfig,
)
from edge_agent.contract.manifest import load_bundle  # noqa: E402
from edge_agent.contract.preprocess import preprocess_frame  # noqa: E402

DECODE = DecodeSpec(stretch=StretchConfig(method="linear", asinh_a=0.5))
SIZE = 32
CLASSES = (2, 5, 8)


def _sky(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A faint 32 x 32 frame whose bright blob's place says its class."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cx = {2: 8.0, 5: 16.0, 8: 24.0}[cls] + rng.uniform(-1.5, 1.5)
    blob = np.exp(-(((xx - cx) / 3.0) ** 2 + ((yy - SIZE / 2) / 3.0) ** 2))
    return rng.normal(0, 1, (SIZE, SIZE)) + 30 * blob


def _write(path: Path, sky: np.ndarray) -> None:
    if path.suffix == ".png":  # a faint 16-bit frame: a few hundred counts of 65535
        ok, data = cv2.imencode(".png", np.clip(300 + 25 * sky, 0, None).astype(np.uint16))
        assert ok
        path.write_bytes(data.tobytes())
    else:
        buf = io.BytesIO()
        fits.PrimaryHDU((1e-3 * sky).astype(np.float32)).writeto(buf)
        path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deep-frames")
    rng = np.random.default_rng(3)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i in range(36):
            cls = CLASSES[i % 3]
            name = f"f{i:02d}.{'png' if i % 2 else 'fits'}"
            _write(root / name, _sky(cls, rng))
            writer.writerow([name, cls])
    return root / "labels.csv"


@pytest.mark.slow
def test_a_non_default_stretch_gives_the_same_tensors_in_training_the_gate_and_the_agent(
    labelled: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.config import make_config
    from training.data import PreprocessedImages

    # 1. galaxy-train's own loop, its reader watched.
    readers: list[Any] = []
    real_open = train_module.open_labelled

    def watched_open(*args: Any, **kwargs: Any) -> Any:
        readers.append(real_open(*args, **kwargs))
        return readers[-1]

    monkeypatch.setattr(train_module, "open_labelled", watched_open)
    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    config = make_config(
        {
            "data": str(labelled),
            "out": str(run_dir),
            "model": "test_efficientnet",
            "image_size": SIZE,
            "decode": DECODE.model_dump(),
            "batch_size": 12,
            "epochs": 2,
            "lr": 0.01,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
            "device": "cpu",
            "progress": False,
            "check_conflicts": False,
        }
    )
    train_module.train(config, echo=lambda _: None)
    (training_set,) = readers

    # 2. build-engine from the run, its gate loader watched.
    gate_batches: list[Any] = []
    real_gate = build_pipeline.load_gate_only

    def watched_gate(*args: Any, **kwargs: Any) -> Any:
        gate_batches.append(real_gate(*args, **kwargs))
        return gate_batches[-1]

    monkeypatch.setattr(build_pipeline, "load_gate_only", watched_gate)
    bundle = tmp_path / "bundle"
    rc = build_main(
        [
            "--checkpoint", str(run_dir), "--out", str(bundle), "--backend", "onnxruntime",
            "--precision", "fp16", "--gate-data", str(labelled), "--gate-size", "36",
            "--gate-min-images", "1", "--gate-threshold", "100", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == exit_codes.OK, capsys.readouterr().err
    manifest = load_bundle(bundle)
    assert manifest.decode == DECODE
    (gate,) = gate_batches

    # 3. The running agent's pipeline on the bundle, its decoder and preprocessing watched.
    agent_images: dict[bytes, np.ndarray] = {}
    agent_tensors: dict[bytes, np.ndarray] = {}
    real_decode, real_pre = prepare_module.decode_bytes, prepare_module.preprocess_frame

    def watched_decode(data: bytes, *args: Any, **kwargs: Any) -> np.ndarray:
        image = real_decode(data, *args, **kwargs)
        agent_images[bytes(data)] = image.copy()
        return image

    def watched_pre(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        tensor = real_pre(image, *args, **kwargs)
        agent_tensors[image.tobytes()] = tensor.copy()
        return tensor

    monkeypatch.setattr(prepare_module, "decode_bytes", watched_decode)
    monkeypatch.setattr(prepare_module, "preprocess_frame", watched_pre)
    files = sorted(p for p in labelled.parent.iterdir() if p.suffix in (".png", ".fits"))
    (tmp_path / "agent").mkdir()
    with FolderPipeline(tmp_path / "agent", bundle, formats=ALL_FORMATS) as rig:
        for f in files:
            (rig.inbox / f.name).write_bytes(f.read_bytes())
        rig.wait(classified=len(files), errors=0, timeout=60)

    spec = config.spec
    refs = [training_set.ref(i) for i in range(len(training_set))]
    for f in files:
        data = f.read_bytes()
        agent = agent_tensors[agent_images[data].tobytes()]
        i = refs.index(str(f))
        trained = PreprocessedImages(training_set, np.array([i]), spec)[0][0].numpy()
        gated = gate.images[gate.refs.index(str(f))]
        np.testing.assert_array_equal(trained, agent, err_msg=f"training vs agent: {f.name}")
        np.testing.assert_array_equal(gated, agent, err_msg=f"gate vs agent: {f.name}")
        # Teeth: the defaults every stage used before (asinh) give another tensor.
        before = preprocess_frame(decode_bytes(data, DecodeConfig()), spec, "RGB")
        assert np.abs(before - agent).max() > 0.2, f.name

    # 4. evaluate and calibrate read the run's images with the run's decoding spec too.
    import edge_agent.contract.labelled_data as labelled_data
    import training.evaluate as evaluate_module
    from training.calibration import calibrate_run

    later: list[Any] = []

    def watched_later(*args: Any, **kwargs: Any) -> Any:
        later.append(real_open(*args, **kwargs))
        return later[-1]

    monkeypatch.setattr(evaluate_module, "open_labelled", watched_later)
    monkeypatch.setattr(labelled_data, "open_labelled", watched_later)
    evaluate_module.evaluate_checkpoint(run_dir, labelled, progress=False, echo=lambda _: None)
    calibrate_run(
        run_dir, labelled, device=torch.device("cpu"), progress=False, echo=lambda _: None
    )
    assert len(later) == 2
    for reader in later:
        for i in range(len(reader)):
            j = refs.index(reader.ref(i))
            np.testing.assert_array_equal(reader[i][0], training_set[j][0], err_msg=reader.ref(i))


def test_galaxy_train_stretch_option_records_the_decode_spec(tmp_path: Path) -> None:
    from training.cli import build_parser, train_config_values
    from training.config import make_config

    spec = tmp_path / "decode.json"
    spec.write_text('{"stretch": {"low_percentile": 1.0}, "fits": {"hdu": 1}}')
    argv = ["train", "--data", "x", "--out", str(tmp_path), "--decode-spec", str(spec)]
    args = build_parser().parse_args([*argv, "--stretch", "linear"])
    config = make_config(train_config_values(args))
    assert config.decode == DecodeSpec.model_validate(
        {"stretch": {"method": "linear", "low_percentile": 1.0}, "fits": {"hdu": 1}}
    )
    assert make_config({"data": "x", "out": "y"}).decode == DecodeSpec()
