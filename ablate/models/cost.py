"""Parameters and MACs with one convention, plus the sequence-length facts of the study.

MACs are fvcore's (one multiply-add = one MAC; convolutions, linear/matmul layers and norms,
batch 1 with `input_size`), plus attention, plus an explicit count for every selective scan; fvcore
sees neither. `F.scaled_dot_product_attention` is counted as 2*L*S*D per call (q @ k^T and
attn @ v, D the total width over heads; L queries, S keys), a causal mask included, so a causal
switch changes no MAC count. The scan: 9*B*L*D*N + B*D*L per scan direction (+ B*D*L with a z gate), VMamba's formula. The scan
runs as one opaque custom op (or mamba_ssm's kernel), so fvcore counts nothing inside it;
the scans are counted by recording every `selective_scan` call made during fvcore's trace, and
are not run there (they return zeros): MACs depend on shapes only, and a dense model's scans at
800x1280 would otherwise dominate the time of `ablate plan`.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ablate.rules import hw_pair

from .ssm import record_scans

__all__ = ['Cost', 'count_cost', 'tau']


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int  # all MACs, the SSM's included
    macs_ssm: int  # the selective scans alone (x_proj/dt_proj are ordinary matmuls in `macs`)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_cost(model: nn.Module, input_size: tuple[int, int] | None = None,
               inputs: tuple | None = None) -> Cost:
    """Params and MACs of one forward pass of `model` in eval mode.

    Give either input_size (H, W): one zero image of batch 1 on the model's device, or the
    exact positional `inputs` for any model containing SSM mixers (e.g. a detector's list of
    images). The model's train/eval mode is restored afterwards.
    """
    if (input_size is None) == (inputs is None):
        raise ValueError(f'count_cost: give exactly one of input_size or inputs, got input_size={input_size!r} '
                         f'and inputs of type {type(inputs).__name__}')
    if inputs is None:
        h, w = hw_pair('input_size', input_size)
        p = next(model.parameters())
        inputs = (torch.zeros(1, getattr(model, 'in_chans', 3), h, w, device=p.device, dtype=p.dtype),)
    elif not isinstance(inputs, tuple):
        inputs = (inputs,)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # fvcore.nn's import-time torch.jit.script
        from fvcore.nn import FlopCountAnalysis
    was_training = model.training
    model.eval()
    fvcore_log = logging.getLogger('fvcore')
    level = fvcore_log.level
    try:
        fvcore_log.setLevel(logging.ERROR)  # "unsupported operator" notices for elementwise ops
        with torch.no_grad(), record_scans(compute=False) as scans, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle('aten::scaled_dot_product_attention', _attention_macs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
            macs_fvcore = int(analysis.total())
    finally:
        fvcore_log.setLevel(level)
        model.train(was_training)
    macs_ssm = sum(call.macs for call in scans)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=params, macs=macs_fvcore + macs_ssm, macs_ssm=macs_ssm)


def _attention_macs(inputs: list, outputs: list) -> int:
    """fvcore op handle of aten::scaled_dot_product_attention: q (..., L, d), k (..., S, d), v (..., S, dv)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch_heads = math.prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def tau(model_or_dims: nn.Module | Sequence[int]) -> int:
    """The long-sequence threshold L > 6*D of the paper (Eq. 7), D the stage-3 (stride 16) width."""
    dims = getattr(model_or_dims, 'dims', model_or_dims)
    if isinstance(dims, nn.Module) or len(dims) != 4:
        raise ValueError(f'tau: need a model with .dims or 4 stage widths, got {model_or_dims!r:.80}')
    return 6 * int(dims[2])
