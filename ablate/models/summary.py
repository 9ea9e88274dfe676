"""Print params and MACs of every variant x arm at one input size.

    python -m ablate.models.summary                      # all variants, 224x224, cross scan
    python -m ablate.models.summary --size 800 1280 --variants tiny small --json

Columns: params, MACs (fvcore convention + the selective scans), the scans' share, tokens at
stride 16 for the size, tau = 6 x stage-3 width (the paper's long-sequence threshold) and
whether the size is long-sequence (L > tau) for that variant. Models carry a 1000-class head.
"""
from __future__ import annotations

import argparse
import json
import sys

from tabulate import tabulate

from ablate.rules import hw_pair

from .cost import count_cost, tau
from .mambaout import VARIANTS, build_model, seq_len
from .ssm import SCAN_ORDERS, scan_directions

ARMS = {'mambaout': False, 'ssm': True}


def rows(size: tuple[int, int], variants: list[str], scan: str) -> list[dict]:
    """One dict per variant x arm: variant, arm, scan, size, params, macs, macs_ssm, tokens, tau, long."""
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"model.name={name!r} is not a variant; choose from: {', '.join(VARIANTS)}")
    scan_directions(scan)
    hw_pair('--size', list(size))
    out = []
    tokens = seq_len(tuple(size))
    for name in variants:
        for arm, ssm in ARMS.items():
            model = build_model(name, ssm=ssm, scan=scan)
            cost = count_cost(model, input_size=tuple(size))
            t = tau(model)
            out.append(dict(variant=name, arm=arm, scan=scan if ssm else None, size=list(size), **cost.as_dict(),
                            tokens=tokens, tau=t, long=tokens > t))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='ablate models', description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', nargs=2, type=int, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), metavar='NAME',
                        help=f"any of: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument('--scan', default='cross', help=f"SSM scan order: {', '.join(SCAN_ORDERS)}")
    parser.add_argument('--json', action='store_true', help='print a JSON list instead of a table')
    args = parser.parse_args(argv)
    try:
        table = rows(tuple(args.size), args.variants, args.scan)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    h, w = args.size
    print(tabulate(
        [[r['variant'], r['arm'], r['params'] / 1e6, r['macs'] / 1e9, r['macs_ssm'] / 1e9, r['tokens'], r['tau'],
          'long' if r['long'] else 'short'] for r in table],
        headers=['variant', 'arm', 'params (M)', 'MACs (G)', 'SSM MACs (G)', f'tokens@16 ({h}x{w})', 'tau',
                 'regime'],
        floatfmt=('', '', '.2f', '.3f', '.3f'), tablefmt='github'))
    print(f'\nMACs: fvcore (1 multiply-add = 1 MAC, batch 1) + 9*B*L*D*N + B*D*L per scan direction; '
          f'SSM arm scan order: {args.scan}.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
