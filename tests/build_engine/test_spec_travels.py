"""What the model needs travels with it: a model trained with a non-default preprocessing spec,
deployed by build-engine, sees on the device exactly the pixels it saw in training.

The run is real and small: galaxy-train's own training loop (timm's 0.1 M-parameter test
network, two epochs on generated non-square images) with the spec ``crop: none`` and inputs in
[0, 1] (``x / 255``), then ``build-engine --checkpoint`` into an ONNX Runtime bundle, then the
agent's own path (the contract decoder, the bundle's spec, the ONNX Runtime backend) against
PyTorch with the training eval transform on the same files. Before this test the manifest got
the default spec (centre square, ``x / 127.5 - 1``) whatever the training used; the last
assertions show that such a bundle would give other answers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from build_engine.cli import EXIT_OK, main  # noqa: E402
from edge_agent.backends.factory import create_backend  # noqa: E402
from edge_agent.contract.decode import decode_file  # noqa: E402
from edge_agent.contract.decode_config import DecodeConfig  # noqa: E402
from edge_agent.contract.labelled_data import open_labelled  # noqa: E402
from edge_agent.contract.manifest import load_bundle  # noqa: E402
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec  # noqa: E402

SPEC = PreprocessSpec(input_size=32, crop="none", scale=1.0 / 255.0, offset=0.0)
CLASSES = (2, 5, 8)


def _frame(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A 24 x 48 frame (wide: the crop rule matters) whose colour and place say its class."""
    h, w = 24, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = {2: 8.0, 5: 24.0, 8: 40.0}[cls] + rng.uniform(-2, 2)
    blob = np.exp(-(((xx - cx) / 5.0) ** 2 + ((yy - h / 2) / 5.0) ** 2))
    image = rng.normal(20, 6, (h, w, 3))
    image[..., CLASSES.index(cls)] += 200 * blob
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    root = tmp_path_factory.mktemp("wide-frames")
    rng = np.random.default_rng(7)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i in range(60):
            cls = CLASSES[i % 3]
            cv2.imwrite(str(root / f"f{i:02d}.png"), _frame(cls, rng)[:, :, ::-1])
            writer.writerow([f"f{i:02d}.png", cls])
    return root / "labels.csv"


@pytest.fixture(scope="module")
def run_dir(labelled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.config import make_config
    from training.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "run"
    config = make_config(
        {
            "data": str(labelled),
            "out": str(out),
            "model": "test_efficientnet",
            "image_size": SPEC.input_size,
            "preprocess": SPEC.model_dump(),
            "batch_size": 16,
            "epochs": 2,
            "lr": 0.01,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
            "device": "cpu",
            "progress": False,
            "check_conflicts": False,
        }
    )
    train(config, echo=lambda _: None)
    return out


@pytest.mark.slow
def test_non_default_spec_gives_the_same_top1_through_the_agent_as_through_pytorch(
    labelled: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.checkpoint import load_model_weights
    from training.data import PreprocessedImages

    bundle = tmp_path / "bundle"
    rc = main(["--checkpoint", str(run_dir), "--out", str(bundle), "--backend", "onnxruntime"])
    assert rc == EXIT_OK, capsys.readouterr().err
    manifest = load_bundle(bundle)
    assert manifest.preprocess == SPEC  # not the default centre square, x / 127.5 - 1
    assert (manifest.input_name, manifest.output_name) == ("input", "logits")

    # The agent's path: its decoder, the manifest's spec, its ONNX Runtime backend.
    files = sorted(labelled.parent.glob("*.png"))
    frames = [decode_file(f, DecodeConfig()) for f in files]
    backend = create_backend(bundle, manifest)
    agent_logits = np.concatenate(
        [backend.infer_frames(frames[i : i + 8]).logits for i in range(0, len(frames), 8)]
    )

    # PyTorch with the training eval transform, on the same files.
    model, config = load_model_weights(run_dir / "best.safetensors")
    images = open_labelled(labelled, check_conflicts=False)
    order = {images.ref(i): i for i in range(len(images))}
    dataset = PreprocessedImages(images, np.array([order[str(f)] for f in files]), config.spec)
    with torch.no_grad():
        torch_logits = model(torch.stack([dataset[i][0] for i in range(len(dataset))])).numpy()

    assert np.array_equal(agent_logits.argmax(1), torch_logits.argmax(1))
    np.testing.assert_allclose(agent_logits, torch_logits, atol=1e-4, rtol=1e-3)

    # The test has teeth: the spec the manifest used to get feeds other pixels and other logits.
    default_spec = DEFAULT_SPEC.model_copy(update={"input_size": SPEC.input_size})
    wrong = create_backend(bundle, manifest.model_copy(update={"preprocess": default_spec}))
    wrong_logits = np.concatenate(
        [wrong.infer_frames(frames[i : i + 8]).logits for i in range(0, len(frames), 8)]
    )
    assert np.abs(wrong_logits - torch_logits).max() > 0.1
