"""A light segmentation head for small backbones: every stage to the same width by a 1x1 conv,
upsampled to stride 4 and summed, one 3x3 conv-BN-ReLU, a 1x1 classifier, bilinear to input size.

It is what a pico backbone (8-32 channels a stage) can feed without the head dwarfing it: at
384x384 with 32 channels it costs 0.1 GMACs, against UperNet's several. Long-range mixing then
has to come from the backbone, which is what the occlusion task measures.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ablate.tasks.heads.backbone import StageFeatures, no_weight_decay


class LightSegmenter(nn.Module):
    """Backbone + light head; (B, 3, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, features: StageFeatures, num_classes: int, channels: int = 32):
        super().__init__()
        self.features = features
        self.laterals = nn.ModuleList(nn.Conv2d(d, channels, kernel_size=1) for d in features.dims)
        self.fuse = Conv2dNormActivation(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.features(x)  # strides 4, 8, 16, 32
        size = stages[0].shape[-2:]
        summed = sum(F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
                     for lateral, f in zip(self.laterals, stages))
        logits = self.classifier(self.fuse(summed))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
