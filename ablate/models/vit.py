"""DeiT-style ViTs (timm's VisionTransformer) with one switch, `causal`: a raster-order causal
attention mask, the paper's second characteristic (docs/study.md §5: causal attention costs ViT-Ti 1.6
and ViT-S 0.9 ImageNet top-1 points).

With causal=False this is timm's `deit_<size>_patch16_224` (same parameters, names and outputs;
its state dict loads as is), at any input size (patch 16). With causal=True every attention layer
takes a mask under which patch token t sees the patch tokens 0..t in raster order, and the class
token, which DeiT reads for the logits, sees every patch but is seen by none: exactly a causal mask
over the sequence [patches..., class token], i.e. the class token read last, so a causal model can
still classify. No parameter and no MAC changes (attention is counted as 2*L^2*D per block either
way, see cost.py).
"""
from collections.abc import Sequence
from typing import Annotated, Any, Optional

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ablate.rules import hw_pair, is_number, rule

from .family import Family, Switch, checked, register

__all__ = ['FAMILY', 'VARIANTS', 'CausalViT', 'build_model', 'readout_causal_mask']

PATCH = 16
# name -> timm's DeiT constructor arguments (deit_tiny_patch16_224, deit_small_patch16_224)
VARIANTS: dict[str, dict] = {
    'deit_tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'deit_small': dict(embed_dim=384, depth=12, num_heads=6),
}


def readout_causal_mask(patches: int) -> torch.Tensor:
    """(1 + patches) x (1 + patches) bool, True = may attend; token 0 is the class token.

    Patch i (row i + 1) sees patches 0..i and not the class token; the class token sees every patch
    and itself.
    """
    n = patches + 1
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[1:, 0] = False  # patches never see the class token, which summarises all patches
    allowed[0, :] = True
    return allowed


class CausalViT(VisionTransformer):
    """timm's VisionTransformer whose `causal` attribute sets the readout-causal mask on every block."""

    def __init__(self, causal: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.causal = causal
        if causal:
            if self.num_prefix_tokens != 1 or self.dynamic_img_size:
                raise ValueError('causal=True needs one class token and a fixed input size')
            self.register_buffer('attention_mask', readout_causal_mask(self.patch_embed.num_patches), persistent=False)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        if self.causal and attn_mask is None:
            attn_mask = self.attention_mask
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, attn_mask: Optional[torch.Tensor] = None,
                              **kwargs: Any) -> Any:
        if self.causal and attn_mask is None:
            attn_mask = self.attention_mask
        return super().forward_intermediates(x, *args, attn_mask=attn_mask, **kwargs)


@checked
def build_model(
        name: str,
        causal: bool = False,  # the switch: readout-causal attention in raster order
        drop_path_rate: Annotated[Optional[float], rule(
            lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)', optional=True)] = None,  # None -> 0.1 (DeiT)
        num_classes: int = 1000,
        image_size: Sequence[int] = (224, 224),
        **overrides: Any) -> nn.Module:
    """The DeiT variant `name` at `image_size` (H, W: multiples of 16); num_classes=0: no classifier."""
    if name not in VARIANTS:
        raise ValueError(f"model.name={name!r} is not a variant; choose from: {', '.join(VARIANTS)}")
    size = hw_pair('task.image_size', image_size, minimum=PATCH, multiple=PATCH)
    return CausalViT(causal=causal, img_size=size, patch_size=PATCH, num_classes=num_classes,
                     drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate,
                     **VARIANTS[name], **overrides)


def seq_len(image_size: Sequence[int]) -> int:
    """L: the patch tokens of an (H, W) input (the class token left out, as the paper's 196 at 224)."""
    return (int(image_size[0]) // PATCH) * (int(image_size[1]) // PATCH)


FAMILY = register(Family(
    name='vit',
    variants=tuple(VARIANTS),
    build=build_model,
    switches=(Switch('causal', labels=('fully visible', 'causal')),),
    tau=lambda variant: 6 * VARIANTS[variant]['embed_dim'],  # docs/study.md §2: tau = 6 * D (2304 for ViT-S)
    seq_len=seq_len,
    record_keys=('causal',),
))
