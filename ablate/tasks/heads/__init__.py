"""Dense-task heads on the Gated CNN backbone: the stage-feature adapter, FPN (for Mask R-CNN), UperNet,
and a light segmentation head for small backbones."""
from ablate.tasks.heads.backbone import (
    StageFeatures, backbone_source, build_backbone, input_size, load_backbone_weights, no_weight_decay, read_state_dict,
)
from ablate.tasks.heads.fpn import BackboneWithFPN
from ablate.tasks.heads.light import LightSegmenter
from ablate.tasks.heads.upernet import FCNHead, UperNet, UperNetHead

__all__ = [
    "BackboneWithFPN", "FCNHead", "LightSegmenter", "StageFeatures", "UperNet", "UperNetHead", "backbone_source", "build_backbone", "input_size",
    "load_backbone_weights", "no_weight_decay", "read_state_dict",
]
