"""Backbone-to-FPN adapter for torchvision's detection models."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ablate.tasks.heads.backbone import StageFeatures


class BackboneWithFPN(nn.Module):
    """Stage outputs (strides 4..32) -> FPN levels P2..P5 plus P6 by max-pooling P5.

    This is the Mask R-CNN 1x neck of mmdetection's Swin/VMamba/MambaOut configs (256 channels,
    5 outputs, no extra convs). The output is the OrderedDict {"0".."3", "pool"} that torchvision's
    RPN and MultiScaleRoIAlign expect, and `out_channels` tells MaskRCNN the width.
    """

    def __init__(self, features: StageFeatures, out_channels: int = 256):
        super().__init__()
        self.features = features
        self.fpn = FeaturePyramidNetwork(list(features.dims), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.features(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(stages)))
