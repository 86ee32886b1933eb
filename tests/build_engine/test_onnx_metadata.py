"""What a model carries in its ONNX metadata (build_engine/onnx_metadata.py): absent is None,
present but invalid is a one-line error, never a silent default."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_engine.errors import ExportError
from build_engine.export import export_module, load_onnx
from build_engine.onnx_metadata import META_DECODE, META_PREPROCESS, read_metadata


def test_onnx_without_metadata_has_no_spec(tiny_torch_model, tmp_path: Path) -> None:
    path = tmp_path / "bare.onnx"
    export_module(tiny_torch_model, path, input_size=64)
    meta = read_metadata(load_onnx(path))
    assert meta.spec is None and meta.model_name == "unknown"
    assert meta.decode is None  # exported before the decoding spec travelled: the defaults


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        (META_PREPROCESS, '{"input_size": 64, "crop": "diagonal"}', "preprocessing spec"),
        (META_DECODE, '{"stretch": {"method": "sideways"}}', "decoding spec"),
    ],
)
def test_a_corrupt_spec_in_the_metadata_is_an_error(
    tiny_onnx: Path, key: str, value: str, what: str
) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    (prop,) = [p for p in model.metadata_props if p.key == key]
    prop.value = value
    with pytest.raises(ExportError, match=f"m.onnx: metadata {key} is not a valid {what}"):
        read_metadata(model, "m.onnx")
