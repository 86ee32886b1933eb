"""Option types shared by ``build-engine`` and ``build-engine-compare`` (argparse ``type=``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.preprocess import PreprocessSpec

_Model = TypeVar("_Model", bound=BaseModel)


def positive(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _json_file(text: str, model: type[_Model]) -> _Model:
    """The JSON file ``text`` as ``model``, validated strictly; its first mistake as the error."""
    try:
        return model.model_validate_json(Path(text).read_text(encoding="utf-8"))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: unreadable ({exc.strerror})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise argparse.ArgumentTypeError(f"{text}: {where}: {first['msg']}") from exc


def spec_file(text: str) -> PreprocessSpec:
    """``--preprocess-spec FILE.json``: a :class:`PreprocessSpec`, validated strictly."""
    return _json_file(text, PreprocessSpec)


def decode_spec_file(text: str) -> DecodeSpec:
    """``--decode-spec FILE.json``: a :class:`DecodeSpec` (stretch, FITS), validated strictly."""
    return _json_file(text, DecodeSpec)
