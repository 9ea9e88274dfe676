"""Time ablate's selective scan backends against a careful sequential PyTorch loop, in one run.

    python bench/bench_scan.py            # calibration size: B=8, D=192, L=3136 (56x56), N=16
    python bench/bench_scan.py --quick    # B=2, D=32, L=196, N=16: a few seconds

Prints one table: forward and forward+backward seconds (best of --repeats rounds in which all
variants take turns, after one warm-up each) of
the compiled kernel ('cpp'), the chunked torch scan ('torch') and the reference loop, each with
its speed-up over the reference (> 1: faster), then the compiled kernel on 1 thread vs all
threads; and checks that all agree. The reference
materialises exp(delta A) and delta B u once as (B, D, L, N) and steps through them with unbind,
so its backward stacks the per-step grads once instead of allocating a full-size grad per step.
"""
from __future__ import annotations

import argparse
import os

# On shared, oversubscribed CPUs OpenMP's spinning barriers make every op many times slower;
# passive waiting keeps the comparison about the algorithms. Must be set before torch loads.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import time  # noqa: E402
from typing import Callable, Hashable, TypeVar  # noqa: E402

from tabulate import tabulate  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ablate.models.ssm import selective_scan  # noqa: E402


def reference_loop(u, delta, A, B, C, D, delta_bias):
    """Sequential selective scan: one (B, D, N) state update per step, on contiguous slices."""
    delta = F.softplus(delta + delta_bias[:, None]).permute(2, 0, 1)  # (L, B, D)
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (L, B, D, N), time-major
    drive = (delta * u.permute(2, 0, 1)).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(2)
    readout = C.permute(2, 0, 1).unsqueeze(-1)  # (L, B, N, 1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a_t, b_t, c_t in zip(decay.unbind(0), drive.unbind(0), readout.unbind(0)):
        h = torch.addcmul(b_t, a_t, h)
        ys.append(torch.bmm(h, c_t))  # (B, D, 1)
    return torch.cat(ys, dim=2) + u * D[:, None]


def ours(u, delta, A, B, C, D, delta_bias):
    return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True)


def inputs(batch: int, dim: int, length: int, d_state: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    tensors = [
        torch.randn(batch, dim, length, generator=g),  # u
        torch.randn(batch, dim, length, generator=g) * 0.1,  # delta before bias and softplus
        -torch.arange(1, d_state + 1.0).repeat(dim, 1),  # A (Mamba's S4D-real init)
        torch.randn(batch, d_state, length, generator=g),  # B
        torch.randn(batch, d_state, length, generator=g),  # C
        torch.ones(dim),  # D
        dt + torch.log(-torch.expm1(-dt)),  # delta_bias: inverse softplus of dt ~ logU[1e-3, 0.1]
    ]
    return [t.requires_grad_(True) for t in tensors]


K = TypeVar('K', bound=Hashable)


def best_times(fns: dict[K, Callable[[], object]], repeats: int) -> dict[K, float]:
    """Best seconds of each function over `repeats` rounds, after one warm-up call each.

    The functions take turns within every round, so a slow spell of a shared machine hits all of
    them alike and the ratios between them stay fair.
    """
    times: dict[K, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='small sizes: B=2, D=32, L=196')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--dim', type=int, default=192)
    parser.add_argument('--length', type=int, default=3136)
    parser.add_argument('--d-state', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.dim, args.length = 2, 32, 196
    xs = inputs(args.batch, args.dim, args.length, args.d_state)
    w = torch.randn(args.batch, args.dim, args.length)
    print(f'B={args.batch} D={args.dim} L={args.length} N={args.d_state}, {torch.get_num_threads()} threads, '
          f'best of {args.repeats}')

    def run(fn, backend: str | None = None, threads: int | None = None, grad: bool = False) -> Callable[[], None]:
        def call():
            if backend is not None:
                os.environ['ABLATE_SCAN_BACKEND'] = backend
            all_threads = torch.get_num_threads()
            torch.set_num_threads(threads or all_threads)
            try:
                if grad:
                    torch.autograd.grad((fn(*xs) * w).sum(), xs)
                else:
                    with torch.no_grad():
                        fn(*xs)
            finally:
                torch.set_num_threads(all_threads)
        return call

    with torch.no_grad():
        want = reference_loop(*xs)
        for backend in ('cpp', 'torch'):
            os.environ['ABLATE_SCAN_BACKEND'] = backend
            print(f'max |{backend} - reference| = {(ours(*xs) - want).abs().max().item():.2e}')
    threads = torch.get_num_threads()
    variants = {'reference loop': (reference_loop, None, None), 'cpp': (ours, 'cpp', None),
                'torch': (ours, 'torch', None), 'cpp, 1 thread': (ours, 'cpp', 1)}
    fns = {(name, grad): run(fn, backend, n, grad) for name, (fn, backend, n) in variants.items()
           for grad in (False, True)}
    best = best_times(fns, args.repeats)
    results = {name: (best[name, False], best[name, True]) for name in variants}
    rf, rb = results['reference loop']
    rows = [(name, f, rf / f, b, rb / b) for name, (f, b) in results.items()]
    print(tabulate(rows, headers=('scan', 'forward s', 'x ref', 'fwd+bwd s', 'x ref'), floatfmt='.3f'))
    (cf, cb), (sf, sb) = results['cpp'], results['cpp, 1 thread']
    print(f'cpp, {threads} threads vs 1: forward x{sf / cf:.2f}   forward+backward x{sb / cb:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
