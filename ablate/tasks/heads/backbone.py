"""The Gated CNN backbone as a dense-task feature extractor, its initialisation from a checkpoint,
and the input-size check both dense tasks share.

`StageFeatures` turns a headless `ablate.models` backbone (num_classes=0) into the four stage
outputs (strides 4/8/16/32, NCHW) that FPN and UperNet consume. `load_backbone_weights` copies a
classification checkpoint of the same variant and arm into that backbone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file
from timm.layers import LayerNorm2d
from torch import nn

from ablate.models import Family, family_of
from ablate.rules import ConfigError, hw_pair
from ablate.tasks.base import DataError

HEAD_PREFIX = "head."  # the classifier's head; everything else in a classifier is the backbone


def input_size(key: str, value: Sequence[int]) -> tuple[int, int]:
    """A dense task's [H, W] setting `task.<key>` as two ints; one-line ConfigError unless both >= 32
    (the backbone's total stride)."""
    return hw_pair(f"task.{key}", list(value) if isinstance(value, tuple) else value, minimum=32)


class StageFeatures(nn.Module):
    """Backbone -> its four stage outputs, each through its own LayerNorm.

    The per-output LayerNorm is what Swin, ConvNeXt and VMamba add for dense tasks: in the
    classifier only the pooled last stage is normalised, so the necks would otherwise see stage
    outputs of very different scales.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.dims = tuple(int(d) for d in backbone.dims)
        self.norms = nn.ModuleList(LayerNorm2d(d) for d in self.dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # 4 tensors (B, dims[i], H / 2^(i+2), W / 2^(i+2))
        stages = self.backbone.forward_intermediates(x, intermediates_only=True)
        return [norm(f) for norm, f in zip(self.norms, stages)]


def backbone_source(backbone_ckpt: str | None, backbone_from: str | None) -> str | None:
    """The checkpoint a dense task's backbone starts from, as the task is constructed: `backbone_ckpt`
    (a user's own weights); None with `backbone_from` set, because the job finds that cell's checkpoint
    (ablate.chain) and constructs the task again with it. One-line ConfigError when both are set."""
    if backbone_ckpt and backbone_from:
        raise ConfigError(f"task.backbone_ckpt={backbone_ckpt} and task.backbone_from={backbone_from} are both set; "
                          "give one: a checkpoint file, or the task whose cell of this arm and seed to start from")
    return backbone_ckpt or None


def build_backbone(model_cfg: Mapping[str, Any], image_size: Sequence[int],
                   backbone_ckpt: str | None = None) -> StageFeatures:
    """The headless backbone of `model_cfg` for inputs of `image_size` [H, W] (initialised from
    `backbone_ckpt` if given)."""
    family = family_of(model_cfg["name"])
    backbone = family.build(**model_cfg, num_classes=0, image_size=tuple(image_size))
    if len(getattr(backbone, "dims", ())) != 4:
        raise ValueError(f"model.name={model_cfg['name']} is not allowed on a dense task: FPN and UperNet need a "
                         f"backbone of four stages (strides 4-32), and the {family.name} family has none")
    # Dense tasks read the stage outputs only: the classifier's pooled MLP head (1.3M parameters for
    # tiny) would be dead weight in parameter counts and the optimiser. Checkpoints then match
    # "classifier keys minus head.*".
    backbone.head = nn.Identity()
    if backbone_ckpt:
        load_backbone_weights(backbone, backbone_ckpt, family)
    return StageFeatures(backbone)


def no_weight_decay(module: nn.Module) -> set[str]:
    """Full names of the parameters marked `_no_weight_decay` (the SSM's A_log and D).

    Dense models expose this as `no_weight_decay()`, the hook timm's optimizer factory reads, so
    A_log (2-D, so not caught by timm's "1-D parameters get no decay" rule) keeps Mamba's recipe.
    """
    return {name for name, p in module.named_parameters() if getattr(p, "_no_weight_decay", False)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: `.safetensors`, or a torch file (weights_only) holding a state_dict
    or {"model": state_dict} (the classification jobs' checkpoint.pt)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"task.backbone_ckpt={path} does not exist; expected a classification checkpoint.pt or a .safetensors file"
        )
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or unsafe files
        raise DataError(
            f"task.backbone_ckpt={path} is not a loadable weights-only torch file ({type(exc).__name__})"
        ) from None
    state = payload.get("model", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(
            f"task.backbone_ckpt={path} holds no state_dict; expected a dict of tensors or {{'model': state_dict}}"
        )
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, family: Family) -> None:
    """Copy a classifier's weights (minus its head) into `backbone`; one-line ValueError on any mismatch.

    Mismatches that are refused: another arm (a switch of `family` on in one, off in the other, told
    by its marker parameters), another variant (missing or surplus stage weights, other shapes).
    """
    state = read_state_dict(path)
    own = backbone.state_dict()
    ckpt_arms, own_arms = family.arms_of(state), family.arms_of(own)
    for key, on in own_arms.items():
        if ckpt_arms[key] != on:
            raise ValueError(
                f"task.backbone_ckpt={path} is a checkpoint of the {key}={str(ckpt_arms[key]).lower()} arm but "
                f"model.{key}={str(on).lower()}; initialise each arm from a checkpoint of the same arm"
            )
    missing = [k for k in own if k not in state]
    surplus = [k for k in state if k not in own and not k.startswith(HEAD_PREFIX)]
    if missing or surplus:
        example = f"lacks {missing[0]}" if missing else f"has {surplus[0]}, unknown to the model"
        raise ValueError(
            f"task.backbone_ckpt={path} does not match the backbone ({len(missing)} weights missing, "
            f"{len(surplus)} surplus; e.g. it {example}); expected a checkpoint of the same model variant"
        )
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise ValueError(
                f"task.backbone_ckpt={path}: {key} has shape {tuple(state[key].shape)} but the backbone expects "
                f"{tuple(value.shape)}; expected a checkpoint of the same model variant"
            )
    backbone.load_state_dict({k: state[k] for k in own})
