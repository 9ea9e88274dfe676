"""Time one training step (AdamW) of the SSM arm against the skeleton, side by side in one run.

    python bench/bench_arms.py            # pico batch 32 at 208x208, femto batch 4 at 224x224
    python bench/bench_arms.py --quick    # pico batch 4 at 64x64: a few seconds

For each variant prints the seconds per step of both arms (best of --repeats rounds in which the
two arms take turns, after one warm-up step each), their ratio, the ratio of their MACs
(count_cost, per image) and time ratio / MAC ratio: 1 means the SSM arm costs exactly what its
MACs say; above 1 its MACs run slower than the skeleton's convolutions and matmuls. Prints the selective-scan backend in use.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

# see bench_scan.py: passive OpenMP waiting, set before torch loads
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tabulate import tabulate  # noqa: E402

from ablate.models import build_model, count_cost  # noqa: E402
from ablate.models.ssm import scan_backend  # noqa: E402
from bench_scan import best_times  # noqa: E402  (bench/ is on sys.path when a script there runs)


def train_step(model: torch.nn.Module, batch: int, size: int) -> Callable[[], None]:
    """One forward + backward + AdamW step on fixed random images and labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='pico batch 4 at 64x64 only')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    cases = [('pico', 4, 64)] if args.quick else [('pico', 32, 208), ('femto', 4, 224)]
    print(f'scan backend: {scan_backend()}, {torch.get_num_threads()} threads, best of {args.repeats}')
    rows = []
    for name, batch, size in cases:
        torch.manual_seed(0)
        arms = {ssm: build_model(name, ssm=ssm) for ssm in (False, True)}
        seconds = best_times({ssm: train_step(m, batch, size) for ssm, m in arms.items()}, args.repeats)
        macs = {ssm: count_cost(m, input_size=(size, size)).macs for ssm, m in arms.items()}
        time_ratio, mac_ratio = seconds[True] / seconds[False], macs[True] / macs[False]
        rows.append((f'{name} b{batch} @{size}', seconds[False], seconds[True], time_ratio, mac_ratio,
                     time_ratio / mac_ratio))
    print(tabulate(rows, headers=('case', 'skeleton s', 'SSM s', 'time ratio', 'MAC ratio', 'time / MAC'),
                   floatfmt='.3f'))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
