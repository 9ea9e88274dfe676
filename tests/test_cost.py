"""Params/MACs: the paper's numbers with the SSM off, the exact scan formula with it on."""
import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ablate.models import SCAN_ORDERS, VARIANTS, build_model, count_cost, seq_len, stage_grid, tau
from ablate.models.summary import main as summary_main

# docs/study.md section 4: params (M) and MACs (G) at 224x224, 1000 classes, no SSM
PAPER = {
    'femto': (7.30, 1.156),
    'kobe': (9.14, 1.515),
    'tiny': (26.55, 4.486),
    'small': (48.49, 8.960),
    'base': (84.81, 15.826),
}


def stage_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Feature-map sizes of the 4 stages: every 3x3 stride-2 conv (padding 1) maps n to ceil(n/2)."""
    sizes = []
    for i in range(4):
        for _ in range(2 if i == 0 else 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def expected_ssm_macs(name: str, h: int, w: int, scan: str, batch: int = 1) -> tuple[int, int]:
    """(scan MACs, x_proj + dt_proj MACs) of the SSM arm, worked out by hand."""
    k, n = SCAN_ORDERS[scan], 16
    scans = projections = 0
    for (sh, sw), c, depth in zip(stage_sizes(h, w), VARIANTS[name]['dims'], VARIANTS[name]['depths']):
        length, r = sh * sw, math.ceil(c / 16)
        per_direction = 9 * batch * length * c * n + batch * c * length  # recurrence + D skip
        scans += depth * k * per_direction
        projections += depth * k * batch * length * (c * (r + 2 * n) + r * c)
    return scans, projections


@pytest.mark.parametrize('name', list(PAPER))
def test_ssm_off_reproduces_the_paper(name):
    cost = count_cost(build_model(name), input_size=(224, 224))
    params_m, macs_g = PAPER[name]
    assert abs(cost.params / 1e6 - params_m) <= 0.01
    assert abs(cost.macs / 1e9 - macs_g) <= 0.005 * macs_g
    assert cost.macs_ssm == 0


@pytest.mark.parametrize('name,size,scan', [
    ('pico', (224, 224), 'cross'),
    ('pico', (96, 160), 'cross'),
    ('pico', (80, 144), 'bidirectional'),
    ('nano', (112, 64), 'raster'),
    ('tiny', (224, 224), 'cross'),
])
def test_ssm_on_adds_exactly_the_scan_formula_and_projections(name, size, scan):
    torch.manual_seed(0)
    off = count_cost(build_model(name), input_size=size)
    on = count_cost(build_model(name, ssm=True, scan=scan), input_size=size)
    scans, projections = expected_ssm_macs(name, *size, scan)
    assert on.macs_ssm == scans
    assert on.macs - off.macs == scans + projections  # fvcore counts x_proj/dt_proj, nothing of the scan
    if name == 'tiny':
        assert on.macs_ssm == 1_227_744_000  # +27.4% of MambaOut-Tiny's 4.486 G for the scans alone


def test_cost_scales_with_batch_and_keeps_the_mode():
    model = build_model('pico', ssm=True, scan='raster').train()
    one = count_cost(model, input_size=(64, 96))
    two = count_cost(model, inputs=(torch.zeros(2, 3, 64, 96),))
    assert model.training
    assert two.macs_ssm == 2 * one.macs_ssm and two.macs == 2 * one.macs and two.params == one.params


class _MambaOutFPN(nn.Module):
    """A detector backbone: the 4 stage outputs of a MambaOut through torchvision's FPN."""

    def __init__(self, body: nn.Module, out_channels: int = 32):
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.dims), out_channels)
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body.forward_intermediates(x, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def test_counts_scans_inside_a_detector():
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    torch.manual_seed(0)
    body = build_model('pico', ssm=True, num_classes=0)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    detector = MaskRCNN(_MambaOutFPN(body), num_classes=3, min_size=128, max_size=160, rpn_anchor_generator=anchors,
                        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=5)
    image = torch.rand(3, 128, 160)  # no resize: already 128 x 160, a multiple of 32
    cost = count_cost(detector, inputs=([image],))
    backbone_alone = count_cost(body, input_size=(128, 160))
    assert cost.macs_ssm == backbone_alone.macs_ssm == expected_ssm_macs('pico', 128, 160, 'cross')[0]
    assert cost.macs > backbone_alone.macs  # FPN and heads add fvcore MACs
    assert cost.params == sum(p.numel() for p in detector.parameters())


def test_seq_len_and_tau():
    assert seq_len(224) == 196
    assert seq_len((224, 224)) == 196
    assert seq_len((800, 1280)) == 4000
    assert seq_len((512, 2048)) == 4096
    assert tau(build_model('tiny')) == 2304
    assert tau(VARIANTS['base']['dims']) == 3072
    assert tau((8, 16, 24, 32)) == 144
    for bad in (0, (224, -1), (224,), (224.0, 224)):
        with pytest.raises(ValueError, match='image_size='):
            seq_len(bad)
    with pytest.raises(ValueError, match='4 stage widths'):
        tau((1, 2, 3))


@pytest.mark.parametrize('size', [(200, 200), (33, 47), (7, 7), (1, 1), (17, 31), (224, 224), (97, 130)])
def test_seq_len_is_the_stage3_grid_the_convs_produce(size):
    model = build_model('pico').eval()
    with torch.no_grad():
        stages = model.forward_intermediates(torch.zeros(1, 3, *size), intermediates_only=True)
    for stage, fmap in enumerate(stages):
        assert tuple(fmap.shape[-2:]) == stage_grid(size, stage)
    assert seq_len(size) == stages[2].shape[-2] * stages[2].shape[-1]


def test_seq_len_rounds_up_like_the_convs():
    assert seq_len((200, 200)) == 169 > tau(VARIANTS['pico']['dims']) == 144  # (200 // 16)^2 = 144 would sit at tau
    assert seq_len((33, 47)) == 3 * 3 and seq_len((7, 7)) == 1
    assert seq_len((192, 192)) == 144  # exactly tau for pico: neither short nor long


def test_count_cost_arguments():
    model = build_model('pico')
    with pytest.raises(ValueError, match='exactly one of input_size or inputs'):
        count_cost(model)
    with pytest.raises(ValueError, match='exactly one of input_size or inputs'):
        count_cost(model, input_size=(64, 64), inputs=(torch.zeros(1, 3, 64, 64),))
    with pytest.raises(ValueError, match=r'input_size=\[0, 64\]'):
        count_cost(model, input_size=(0, 64))
    assert count_cost(model, input_size=64) == count_cost(model, input_size=(64, 64))


def test_summary_json_matches_count_cost(capsys):
    assert summary_main(['--variants', 'pico', '--size', '64', '96', '--scan', 'raster', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r['variant'], r['arm']) for r in rows] == [('pico', 'mambaout'), ('pico', 'ssm')]
    torch.manual_seed(0)
    on = count_cost(build_model('pico', ssm=True, scan='raster'), input_size=(64, 96))
    assert {k: rows[1][k] for k in ('params', 'macs', 'macs_ssm')} == on.as_dict()
    assert rows[1]['tokens'] == 24 and rows[1]['tau'] == 144 and rows[1]['long'] is False
    assert rows[0]['macs_ssm'] == 0 and rows[0]['scan'] is None


def test_summary_table_and_bad_input(capsys):
    assert summary_main(['--variants', 'pico', '--size', '208', '208']) == 0
    out = capsys.readouterr().out
    assert 'tokens@16 (208x208)' in out and '| pico' in out and '169' in out and 'long' in out
    assert summary_main(['--variants', 'tinyy']) == 2
    err = capsys.readouterr().err
    assert "model.name='tinyy' is not a variant; choose from: pico, nano, femto, kobe, tiny, small, base" in err
    assert summary_main(['--scan', 'zigzag', '--variants', 'pico']) == 2
    assert "model.scan='zigzag'" in capsys.readouterr().err
    assert summary_main(['--size', '0', '224', '--variants', 'pico']) == 2
    assert '--size=[0, 224] is not allowed: [H, W], two integers >= 1' in capsys.readouterr().err
