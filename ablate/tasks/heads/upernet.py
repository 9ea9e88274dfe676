"""UperNet (Xiao et al., ECCV 2018) on the backbone's four stages, with the auxiliary FCN head.

Layout of mmsegmentation's UPerHead/FCNHead as used by the Swin, VMamba and MambaOut ADE20K
configs: pyramid pooling (scales 1, 2, 3, 6) on stage 4, 1x1 laterals and a top-down pathway with
3x3 output convs on stages 1-3, all four levels upsampled to stride 4, concatenated, fused by a
3x3 conv, dropout 0.1, 1x1 classifier. Every conv is conv-BN-ReLU (torchvision's
Conv2dNormActivation). The auxiliary head (one 3x3 conv-BN-ReLU of 256 channels on stage 3) only
runs when asked for, i.e. during training.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ablate.tasks.heads.backbone import StageFeatures, no_weight_decay


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    conv = nn.Conv2d(channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to s x s grids, 1x1 conv, upsample, concat with input."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), Conv2dNormActivation(in_channels, channels, 1)) for s in scales
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """Four stage features -> class logits at the stride of the first (stride 4)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512, dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.laterals = nn.ModuleList(Conv2dNormActivation(c, channels, 1) for c in in_channels[:-1])
        self.outputs = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = Conv2dNormActivation(len(in_channels) * channels, channels, 3)
        self.classifier = _classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features)] + [self.ppm(features[-1])]
        for i in range(len(levels) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outputs = [conv(level) for conv, level in zip(self.outputs, levels)] + [levels[-1]]
        size = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([outputs[0], *(_resize(o, size) for o in outputs[1:])], dim=1))
        return self.classifier(fused)


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 conv-BN-ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = Conv2dNormActivation(in_channels, channels, 3)
        self.classifier = _classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))


class UperNet(nn.Module):
    """Backbone + UperNet head (+ auxiliary FCN head on stage `aux_stage`); logits at input size."""

    def __init__(
        self,
        features: StageFeatures,
        num_classes: int,
        channels: int = 512,
        aux_channels: int = 256,
        aux_stage: int = 2,
    ):
        super().__init__()
        self.features = features
        self.decode_head = UperNetHead(features.dims, num_classes, channels)
        self.aux_stage = aux_stage
        self.aux_head = FCNHead(features.dims[aux_stage], num_classes, aux_channels)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(self, x: torch.Tensor, with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, classes, H, W); with_aux: (logits, auxiliary logits)."""
        stages = self.features(x)
        logits = _resize(self.decode_head(stages), x.shape[-2:])
        if not with_aux:
            return logits
        return logits, _resize(self.aux_head(stages[self.aux_stage]), x.shape[-2:])
