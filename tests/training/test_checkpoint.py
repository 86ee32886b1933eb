"""best.safetensors carries its config (with the preprocessing spec) and a recorded sha256;
load_for_export verifies the weights and rebuilds the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from training_testkit import TINY_MODEL, flip_bytes, tiny_config_values

from edge_agent.contract.manifest import TrainingProvenance, sha256_file
from edge_agent.contract.preprocess import preprocess_batch
from training.checkpoint import CONFIG_KEY, load_for_export, save_best
from training.config import make_config
from training.errors import CheckpointError, UsageError
from training.model import create_model
from training.weights import record_path, record_weights, verify_weights


def test_save_and_load_for_export_give_the_same_logits(tmp_path: Path) -> None:
    config = make_config(tiny_config_values(tmp_path / "data", tmp_path, drop_rate=0.1))
    torch.manual_seed(0)
    model = create_model(TINY_MODEL, 10, None, 0.1)
    with torch.no_grad():  # make BN statistics non-trivial so that they must round-trip too
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    weights = save_best(model, config, tmp_path)
    (tmp_path / "metrics.json").write_text(
        json.dumps({"test": {"accuracy": 0.91, "macro_f1": 0.88}, "dataset": {"path": "g.h5"}})
    )

    exported = load_for_export(tmp_path)  # a run directory ...
    assert load_for_export(weights).model_name == TINY_MODEL  # ... or the file itself
    assert exported.model_name == TINY_MODEL
    assert exported.num_classes == 10 and exported.input_size == 32
    assert not exported.model.training
    assert next(exported.model.parameters()).dtype == torch.float32
    assert exported.provenance == TrainingProvenance(
        dataset="g.h5",
        split_seed=config.seed,
        test_accuracy=0.91,
        macro_f1=0.88,
        checkpoint_sha256=sha256_file(weights),
    )
    assert exported.spec == config.spec
    assert verify_weights(weights) == sha256_file(weights)
    assert record_path(weights).read_text() == f"{sha256_file(weights)}  best.safetensors\n"
    frames = [
        np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8) for i in range(3)
    ]
    batch = torch.from_numpy(preprocess_batch(frames, config.spec))
    with torch.no_grad():
        torch.testing.assert_close(exported.model(batch), model(batch), rtol=0, atol=0)


def test_a_non_default_spec_travels_in_the_checkpoint(tmp_path: Path) -> None:
    spec = {"input_size": 32, "crop": "none", "scale": 1 / 255, "offset": 0.0}
    config = make_config(tiny_config_values(tmp_path / "data", tmp_path, preprocess=spec))
    save_best(create_model(TINY_MODEL, 10, None, 0.1), config, tmp_path)
    exported = load_for_export(tmp_path)
    assert exported.spec.model_dump(include=set(spec)) == spec


def test_flipped_bytes_in_the_weights_are_refused(tmp_path: Path) -> None:
    """safetensors loads a file whose tensor bytes were changed; the recorded sha256 does not."""
    config = make_config(tiny_config_values(tmp_path / "data", tmp_path))
    weights = save_best(create_model(TINY_MODEL, 10, None, 0.1), config, tmp_path)
    flip_bytes(weights)
    with pytest.raises(CheckpointError, match=r"differs from the .* recorded when it was written"):
        load_for_export(tmp_path)
    record_path(weights).unlink()
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_for_export(tmp_path)
    record_path(weights).write_text("not a sha256sum line\n")
    with pytest.raises(CheckpointError, match="not a sha256sum line"):
        load_for_export(tmp_path)


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no checkpoint here"):
        load_for_export(tmp_path)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    record_weights(plain)
    with pytest.raises(CheckpointError, match=f"no {CONFIG_KEY} metadata"):
        load_for_export(plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    record_weights(broken)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_for_export(broken)
    config = make_config(tiny_config_values(tmp_path, tmp_path))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file(
        {"w": torch.zeros(2)},
        str(wrong / "best.safetensors"),
        metadata={CONFIG_KEY: config.model_dump_json()},
    )
    record_weights(wrong / "best.safetensors")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_for_export(wrong)
