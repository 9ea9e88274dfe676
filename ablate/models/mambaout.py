"""MambaOut (Yu & Wang, CVPR 2025) with one switch, `ssm`, that puts Mamba's selective SSM back.

With ssm=False this is MambaOut exactly: same modules, parameter names, shapes, init and
outputs as `timm.create_model('mambaout_<variant>')`, so timm's state dict loads as is (the key
mapping is the identity). With ssm=True every Gated CNN block gains SiLU + a selective SSM on
the conv branch right after the depthwise conv (paper Eq. 11, SSM(sigma(Conv(.)))), adding only
the `blocks.<j>.ssm.*` parameters; nothing else changes.

Two controls, both changing nothing else:
* causal=True: every block's token mixing is causal in raster order. The 7x7 depthwise conv is
  masked (PixelCNN-style: the rows above, plus the current row up to and including the centre) and
  the SSM arm must scan `raster`, its one causal direction. Parameters and MACs are unchanged (the
  masked taps stay in the weight, multiplied by 0). The stem's and downsamples' 3x3 stride-2 convs
  are not token mixers and stay as they are: across a stage boundary a token sees a one-pixel
  margin of the next row and column.
* match_macs=True (SSM off only): the Gated CNN expansion ratio (hidden width h = int(ratio * C),
  8/3 in MambaOut) is widened until the model's MACs at the evaluated input size equal the SSM
  arm's (same scan, d_state, dt_rank), within 1%; depth and stage widths stay. The iso-MAC control.

Tensors are channels-last (B, H, W, C) inside the stages, as in timm's MambaOut.
"""

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ablate.rules import ConfigError, at_least, hw_pair, is_number, rule

from .family import Family, Switch, checked, register
from .ssm import SCAN_ORDERS, SelectiveSSM2d, scan_directions

__all__ = ['EXPANSION_RATIO', 'FAMILY', 'INITS', 'MambaOut', 'VARIANTS', 'build_model', 'iso_mac_expansion', 'seq_len',
           'stage_grid']

# name -> depths, dims, drop_path (the ImageNet drop-path rate of the variant)
VARIANTS: dict[str, dict] = {
    'pico': dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), drop_path=0.0),  # CPU work
    'nano': dict(depths=(2, 2, 4, 2), dims=(16, 32, 64, 96), drop_path=0.0),  # CPU work
    'femto': dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288), drop_path=0.025),
    'kobe': dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288), drop_path=0.025),
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576), drop_path=0.2),
    'small': dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576), drop_path=0.4),
    'base': dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768), drop_path=0.6),
}


# Every stride-2 conv of the skeleton: the stem's two and each later stage's downsample.
DOWNSAMPLE_CONV = dict(kernel_size=3, stride=2, padding=1)

# Weight init of every Conv2d/Linear outside the SSM (biases start at 0):
#   timm:   trunc-normal, std 0.02 whatever the fan-in (MambaOut's own init);
#   fan_in: trunc-normal, std 1/sqrt(fan_in) (Kaiming with linear gain). At pico/nano widths (8-96
#           channels) std 0.02 is far below 1/sqrt(fan_in), and the input dependence of the
#           activations dies through the depth at a high peak lr (see docs/findings.md, "Recipes").
INITS = ('timm', 'fan_in')

EXPANSION_RATIO = 8 / 3  # MambaOut's Gated CNN hidden width h = int(8/3 * C)
MATCH_TOLERANCE = 0.01  # match_macs: |MACs - SSM arm's MACs| <= 1% of the SSM arm's


def stage_grid(image_size: int | Sequence[int], stage: int = 2) -> tuple[int, int]:
    """(h, w) of stage `stage`'s token map (0-3: strides 4, 8, 16, 32) for an (H, W) input.

    Follows the convs: each maps n -> (n + 2p - k) // s + 1 = ceil(n / 2), so 200 px gives
    100, 50, 25, 13: stage 2 (stride 16) has 13 x 13 = 169 tokens, not (200 // 16)^2 = 144.
    """
    hw = hw_pair('image_size', image_size)
    if stage not in range(4):
        raise ValueError(f'stage={stage!r} must be 0, 1, 2 or 3')
    k, s, p = DOWNSAMPLE_CONV['kernel_size'], DOWNSAMPLE_CONV['stride'], DOWNSAMPLE_CONV['padding']
    for _ in range(2 + stage):  # the stem's 2 convs, then one downsample per stage after the first
        hw = tuple((n + 2 * p - k) // s + 1 for n in hw)
    return hw


def seq_len(image_size: int | Sequence[int]) -> int:
    """L of the study: tokens of the stage-3 (stride 16) map, where tau = 6 * D is defined; 224 -> 196."""
    h, w = stage_grid(image_size, stage=2)
    return h * w


class Stem(nn.Module):
    """Conv3x3 s2 -> LN -> GELU -> Conv3x3 s2 -> LN; (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, out_chs // 2, **DOWNSAMPLE_CONV, **dd)
        self.norm1 = LayerNorm(out_chs // 2, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, **DOWNSAMPLE_CONV, **dd)
        self.norm2 = LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.conv1(x).permute(0, 2, 3, 1))
        x = self.conv2(self.act(x).permute(0, 3, 1, 2))
        return self.norm2(x.permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Conv3x3 s2 -> LN between stages; channels-last in and out."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, **DOWNSAMPLE_CONV, device=device, dtype=dtype)
        self.norm = LayerNorm(out_chs, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class CausalDepthwiseConv(nn.Conv2d):
    """A depthwise conv that sees only taps at or before the centre in raster order: the rows above
    and the centre row up to the centre (PixelCNN's mask A plus the centre). The weight keeps nn.Conv2d's
    name and shape, so checkpoints and parameter counts equal the unmasked conv's."""

    def __init__(self, dim: int, kernel_size: int, device=None, dtype=None):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype)
        mask = torch.zeros(kernel_size, kernel_size, device=device, dtype=dtype)
        centre = kernel_size // 2
        mask[:centre] = 1
        mask[centre, :centre + 1] = 1
        self.register_buffer('mask', mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class GatedCNNBlock(nn.Module):
    """x + DropPath(fc2(GELU(g) * [i, mixer(c)])), (g, i, c) = split(fc1(LN(x))).

    mixer = depthwise Conv7x7 (MambaOut) or SSM(SiLU(Conv7x7)) when `ssm` kwargs are given; the
    conv is masked to raster-order causal taps when `causal`.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, expansion_ratio: float = EXPANSION_RATIO,
                 kernel_size: int = 7, ssm: dict | None = None, causal: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(expansion_ratio * dim)
        self.norm = LayerNorm(dim, **dd)
        self.fc1 = nn.Linear(dim, 2 * hidden, **dd)
        self.act = nn.GELU()
        self.split_indices = (hidden, hidden - dim, dim)  # g, i, c
        self.conv = (CausalDepthwiseConv(dim, kernel_size, **dd) if causal else
                     nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd))
        self.ssm = SelectiveSSM2d(dim, **ssm, **dd) if ssm is not None else None
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, H, W, C)
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2))  # (B, C, H, W)
        if self.ssm is not None:
            c = self.ssm(F.silu(c))
        x = self.fc2(self.act(g) * torch.cat((i, c.permute(0, 2, 3, 1)), dim=-1))
        return self.drop_path(x) + shortcut


class MambaOutStage(nn.Module):
    def __init__(self, dim: int, dim_out: int, depth: int, drop_path: list[float], downsample: bool,
                 ssm: dict | None, expansion_ratio: float = EXPANSION_RATIO, causal: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = Downsample(dim, dim_out, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            GatedCNNBlock(dim_out, drop_path[j], expansion_ratio=expansion_ratio, ssm=ssm, causal=causal, **dd)
            for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class MlpHead(nn.Module):
    """Global average pool -> LN -> Linear(C, 4C) -> GELU -> LN -> dropout -> Linear(4C, classes).

    num_classes=0 drops the last Linear: the head returns the 4C pooled MLP features, as timm's.
    """

    def __init__(self, in_features: int, num_classes: int, mlp_ratio: int = 4, drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = mlp_ratio * in_features
        self.norm = LayerNorm(in_features, **dd)
        self.pre_logits = nn.Sequential(OrderedDict([
            ('fc', nn.Linear(in_features, hidden, **dd)),
            ('act', nn.GELU()),
            ('norm', LayerNorm(hidden, **dd)),
        ]))
        self.num_features = hidden
        self.head_dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_dropout(self.pre_logits(self.norm(x.mean((1, 2)))))
        return x if pre_logits else self.fc(x)


class MambaOut(nn.Module):
    """MambaOut skeleton, +/- the selective SSM in every block.

    Args:
        depths, dims: blocks and widths of the 4 stages (strides 4/8/16/32).
        ssm: insert SiLU + selective SSM after each block's depthwise conv.
        scan: SSM scan order, one of 'cross' (4 directions, summed), 'bidirectional' (2,
            averaged), 'raster' (1 causal direction).
        d_state, dt_rank: SSM state size N and delta rank (None: ceil(C/16)).
        drop_path_rate: stochastic depth rising linearly from 0 over all blocks.
        expansion_ratio: Gated CNN hidden width h = int(ratio * C) in every block.
        causal: raster-order causal token mixing (masked conv; the SSM must scan 'raster').
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: tuple[int, ...] = (3, 3, 9, 3),
            dims: tuple[int, ...] = (96, 192, 384, 576),
            drop_path_rate: float = 0.0,
            drop_rate: float = 0.0,
            ssm: bool = False,
            scan: str = 'cross',
            d_state: int = 16,
            dt_rank: int | None = None,
            init: str = 'timm',
            expansion_ratio: float = EXPANSION_RATIO,
            causal: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)  # timm's factory kwargs, passed to every layer
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f'model.depths={tuple(depths)!r}, model.dims={tuple(dims)!r}: need 4 stages each')
        scan_directions(scan)  # checked here too: with ssm=False no mixer would check it
        if init not in INITS:
            raise ValueError(f"model.init={init!r} is not an init; choose from: {', '.join(INITS)}")
        if causal and ssm and scan != 'raster':
            raise ConfigError(f"model.causal=true with model.scan={scan} is not allowed: a causal SSM arm needs "
                              f"model.scan=raster (the one causal scan order)")
        self.num_classes = num_classes
        self.dims = tuple(dims)
        self.ssm, self.scan, self.causal = ssm, scan, causal
        self.expansion_ratio = expansion_ratio
        self.output_fmt = 'NHWC'
        ssm_kwargs = dict(d_state=d_state, dt_rank=dt_rank, scan=scan) if ssm else None

        self.stem = Stem(in_chans, dims[0], **dd)
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = nn.Sequential()
        self.feature_info = []
        prev = dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.stages.append(MambaOutStage(prev, dim, depth, dp_rates[i], downsample=i > 0, ssm=ssm_kwargs,
                                             expansion_ratio=expansion_ratio, causal=causal, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'stages.{i}'))
            prev = dim
        self.num_features = dims[-1]
        self.head = MlpHead(dims[-1], num_classes, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        self.init = init
        self.apply(self._init_weights)  # touches Conv2d/Linear only; SSM parameters keep Mamba's init

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()  # in_features, or in_channels / groups * kh * kw
            trunc_normal_(m.weight, std=0.02 if self.init == 'timm' else fan_in ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters that get no weight decay: every SSM A_log and D."""
        return {n for n, p in self.named_parameters() if getattr(p, '_no_weight_decay', False)}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/32, W/32, C4), channels-last like timm's MambaOut."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (strides 4/8/16/32) as in timm: indices=None takes all 4, an int the last
        n, a list those stages. There is no per-stage norm, so `norm` changes nothing (as in timm).
        Returns the intermediates, or (final features NHWC, intermediates).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; choose from: NCHW, NHWC")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early or intermediates_only else self.stages
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else x)
        return intermediates if intermediates_only else (x, intermediates)


# --------------------------------------------------------------------------- timm registry
def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 1.0,
        'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc', **kwargs,
    }


default_cfgs = generate_default_cfgs({f'ablate_mambaout_{v}': _cfg() for v in VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> MambaOut:
    if pretrained:
        raise ValueError(f'pretrained={pretrained!r}: ablate_mambaout_{variant} has no hosted weights; '
                         f'build with pretrained=False and load a state dict (timm MambaOut keys load as is)')
    spec = VARIANTS[variant]
    kwargs.setdefault('drop_path_rate', spec['drop_path'])
    return build_model_with_cfg(
        MambaOut, f'ablate_mambaout_{variant}', pretrained=False,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        depths=spec['depths'], dims=spec['dims'], **kwargs)


@register_model
def ablate_mambaout_pico(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('pico', pretrained, **kwargs)


@register_model
def ablate_mambaout_nano(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('nano', pretrained, **kwargs)


@register_model
def ablate_mambaout_femto(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('femto', pretrained, **kwargs)


@register_model
def ablate_mambaout_kobe(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('kobe', pretrained, **kwargs)


@register_model
def ablate_mambaout_tiny(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('tiny', pretrained, **kwargs)


@register_model
def ablate_mambaout_small(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('small', pretrained, **kwargs)


@register_model
def ablate_mambaout_base(pretrained: bool = False, **kwargs) -> MambaOut:
    return _create('base', pretrained, **kwargs)


@checked
def build_model(
        name: str,
        ssm: bool = False,  # the ablated switch: selective SSM on the c branch of every Gated CNN block
        scan: Literal[tuple(SCAN_ORDERS)] = 'cross',  # scan, d_state, dt_rank: inert while ssm=false
        d_state: Annotated[int, at_least(1)] = 16,
        dt_rank: Annotated[Optional[int], at_least(1, optional=True)] = None,  # None -> ceil(C / 16)
        init: Literal[INITS] = 'timm',  # timm: std 0.02; fan_in: std 1/sqrt(fan_in)
        drop_path_rate: Annotated[Optional[float], rule(
            lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)', optional=True)] = None,  # None -> variant's
        causal: bool = False,  # raster-order causal token mixing (needs scan=raster with the SSM)
        match_macs: bool = False,  # SSM off only: widen the Gated CNN to the SSM arm's MACs at image_size
        num_classes: int = 1000,
        image_size: Sequence[int] = (224, 224),
        **overrides: Any) -> nn.Module:
    """The MambaOut variant `name` (see VARIANTS), with the selective SSM when `ssm`.

    num_classes=0 gives a backbone without classifier; image_size (H, W) is the evaluated input
    size, read only by match_macs; overrides go to MambaOut (e.g. in_chans, drop_rate).
    """
    if name not in VARIANTS:
        raise ValueError(f"model.name={name!r} is not a variant; choose from: {', '.join(VARIANTS)}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f'model.num_classes={num_classes!r} must be an integer >= 0')
    if drop_path_rate is not None:
        overrides['drop_path_rate'] = drop_path_rate
    settings = dict(scan=scan, d_state=d_state, dt_rank=dt_rank, init=init, causal=causal, **overrides)
    if match_macs:
        if ssm:
            raise ConfigError('model.match_macs=true with model.ssm=true is not allowed: it widens the SSM-off arm '
                              'to the SSM arm\'s MACs; use it with model.ssm=false')
        hw = hw_pair('task.image_size', image_size)
        frozen = tuple(sorted((k, v) for k, v in settings.items() if k != 'init'))
        settings['expansion_ratio'] = iso_mac_expansion(name, hw, num_classes, frozen)
    return _create(name, num_classes=num_classes, ssm=ssm, **settings)


@functools.lru_cache(maxsize=64)
def iso_mac_expansion(name: str, image_size: tuple[int, int], num_classes: int,
                      settings: tuple[tuple[str, Any], ...] = ()) -> float:
    """The expansion ratio at which `name` without the SSM has the SSM arm's MACs at `image_size`.

    Only fc1 and fc2 grow with the hidden width, so MACs are affine in the ratio (up to int(r * C)):
    a secant through two counts, then one more step from the count at its answer. settings: the
    other build keys of both arms (scan, d_state, ...), as sorted (key, value) pairs.
    """
    from .cost import count_cost  # cost imports this module

    kwargs = dict(settings)

    def macs(ssm: bool, ratio: float = EXPANSION_RATIO) -> int:
        model = _create(name, num_classes=num_classes, ssm=ssm, expansion_ratio=ratio, **kwargs)
        return count_cost(model, input_size=image_size).macs

    target = macs(True)
    r0, m0 = EXPANSION_RATIO, macs(False)
    r1, m1 = 2 * EXPANSION_RATIO, macs(False, 2 * EXPANSION_RATIO)
    for _ in range(3):
        r0, m0, r1 = r1, m1, r1 + (target - m1) * (r1 - r0) / (m1 - m0)
        m1 = macs(False, r1)
        if abs(m1 - target) <= MATCH_TOLERANCE * target:
            return r1
    raise ValueError(f'model.match_macs=true: no expansion ratio brings {name} within {MATCH_TOLERANCE:.0%} of the '
                     f'SSM arm\'s {target / 1e9:.3f} GMACs at {image_size[0]}x{image_size[1]} (last: ratio {r1:.3f}, '
                     f'{m1 / 1e9:.3f} GMACs)')


def _tau(variant: str) -> int:
    from .cost import tau  # cost imports this module

    return tau(VARIANTS[variant]['dims'])


def _cost_facts(model: nn.Module) -> dict[str, Any]:
    """The Gated CNN widths a record's cost block states (match_macs changes them); `model` is a
    MambaOut or a dense model holding one."""
    body = next(m for m in model.modules() if isinstance(m, MambaOut))
    return {'expansion_ratio': round(body.expansion_ratio, 6),
            'hidden_widths': [int(body.expansion_ratio * d) for d in body.dims]}


# MambaOut's switches: ssm, and causal. scan, d_state and dt_rank configure the SSM, so they are inert
# without it, unless match_macs reads them to build the SSM arm it matches.
FAMILY = register(Family(
    name='mambaout',
    variants=tuple(VARIANTS),
    build=build_model,
    switches=(Switch('ssm', labels=('no SSM', 'SSM'), inert_when_off=('scan', 'd_state', 'dt_rank'),
                     kept_by=('match_macs',), marker='A_log'),
              Switch('causal', labels=('fully visible', 'causal'))),
    tau=_tau,
    seq_len=seq_len,
    record_keys=('ssm', 'scan', 'causal', 'match_macs'),
    cost_facts=_cost_facts,
))
