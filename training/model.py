"""Model creation by timm name, with ImageNet weights from the hub or from a local file.

Any timm architecture works (the paper's Table 3 comparison is one ``--model`` flag away). Models
whose input size is fixed at creation (ViT) take it through ``model_kwargs``, e.g.
``img_size=256``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import load_state_dict

from training.errors import ModelError

HUB = "hub"


def create_model(
    name: str,
    num_classes: int = 10,
    pretrained: str | Path | None = None,
    drop_rate: float = 0.2,
    **model_kwargs: Any,
) -> torch.nn.Module:
    """A timm model with a ``num_classes`` head and dropout ``drop_rate`` before it.

    ``pretrained``: None (random init), ``"hub"`` (timm's default ImageNet weights, downloaded
    from the Hugging Face hub, so online only) or a path to a weights file (``.safetensors``,
    ``.pth``, ``.bin``) for offline hosts. The classifier of weights with another class count is
    left out (timm's rule); any other mismatch is an error.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"unknown timm model {name!r}{hint}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": drop_rate, **model_kwargs}
    if pretrained is None:
        return _build(name, False, kwargs)
    if str(pretrained) == HUB:
        try:
            return _build(name, True, kwargs)
        except OSError as exc:
            raise ModelError(
                f"cannot download ImageNet weights for {name} from the Hugging Face hub ({exc}); "
                "offline hosts: pass --pretrained /path/to/weights.safetensors"
            ) from exc
    path = Path(pretrained)
    if not path.is_file():
        raise ModelError(f"{path}: pretrained weights file does not exist (or pass 'hub')")
    model = _build(name, False, kwargs)
    load_backbone(model, path, name)
    return model


def load_backbone(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a timm-format weights file into ``model``, all but a classifier of another shape.

    Done here rather than by timm's ``pretrained_cfg_overlay``, which loads non-strictly as soon
    as the class count differs and so accepts a file of another architecture without a word.
    """
    try:
        state = load_state_dict(str(path))
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: unreadable weights file ({_first_line(exc)})") from exc
    own = model.state_dict()
    head_names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (head_names,) if isinstance(head_names, str) else tuple(head_names)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    wrong = [k for k in mismatched if not is_head(k)]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of other shape; "
            f"e.g. {(missing + unexpected + wrong)[0]!r}"
        )
        raise ModelError(f"{path}: weights do not fit {name} ({detail})")
    model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _build(name: str, pretrained: bool, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        model: torch.nn.Module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ModelError(
            f"timm model {name} rejects an option ({exc}); check --model-kwarg"
        ) from exc
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
