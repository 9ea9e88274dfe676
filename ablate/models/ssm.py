"""Mamba's selective scan (S6) and the 2-D SSM token mixer that the SSM arm inserts.

`selective_scan` has the signature, tensor layout and semantics of mamba_ssm's
`selective_scan_fn` / `selective_scan_ref`:

    u, delta: (B, D, L)      A: (D, N) real       B, C: (B, N, L) or (B, G, N, L), G divides D
    D: (D,)  z: (B, D, L)  delta_bias: (D,)
    delta = softplus(delta + delta_bias)                        (each step optional)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (per channel d and state n)
    y_t = sum_n C_t * h_t + D * u_t;   y *= silu(z)             -> (B, D, L) in u's dtype

It runs in fp32 by one of three implementations (scan_backend(), $ABLATE_SCAN_BACKEND):
mamba_ssm's fused kernel on CUDA when installed; otherwise one torch.library custom op with a
hand-written backward whose body is the compiled CPU kernel csrc/selective_scan.cpp (JIT-built
once, cached; each (batch, channel) row walks L once with its N states in registers, forward keeps
one state per 32 steps and backward recomputes the others from them); or the pure-PyTorch chunked
scan below:

* The sequence is cut into nC chunks of T ~ sqrt(L) steps, stored time-major as (T, nC, ...).
  One Python loop of T steps scans all chunks at once from a zero state, a loop of nC steps hands
  each chunk's final state to the next, and one broadcast op adds the handed-over state (times
  the decay accumulated within the chunk) to every other step. That is ~2 sqrt(L) Python steps
  instead of L, and the arithmetic is the sequential recurrence's: products of decays <= 1 and
  sums, so no exp(+large) and no loss of precision for long sequences.
* Memory stays bounded: the (steps x N) work tensors live in flat buffers of at most
  `_BLOCK_ELEMS` elements, reused block by block over (batch, channels); nothing of size
  B*D*L*N is saved for backward, which recomputes the states (as the CUDA kernel does) and runs
  the chunked scan in reverse for g_t = dL/dh_t.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

# Elements of one (T, nC, batch, G, channels, N) work buffer: 2**22 fp32 = 16 MiB. Forward holds
# two such buffers, backward four, whatever the input size (unless one channel of one image
# needs more: then a buffer holds exactly that).
_BLOCK_ELEMS = 1 << 22

SCAN_ORDERS: dict[str, int] = {'cross': 4, 'bidirectional': 2, 'raster': 1}  # order -> directions


def scan_directions(scan: str) -> int:
    """Directions of the scan order `scan`; one-line ValueError naming the allowed orders otherwise."""
    if scan not in SCAN_ORDERS:
        raise ValueError(f"model.scan={scan!r} is not a scan order; choose from: {', '.join(SCAN_ORDERS)}")
    return SCAN_ORDERS[scan]


# --------------------------------------------------------------------------- scan accounting
@dataclass(frozen=True)
class ScanCall:
    """Shape of one `selective_scan` call, for MAC counting (all directions of a call together)."""
    batch: int
    dim: int  # D: channels x directions
    length: int
    d_state: int
    has_d: bool
    has_z: bool

    @property
    def macs(self) -> int:
        # VMamba's convention: 9*B*L*D*N for the recurrence and readout, + B*D*L for the D skip,
        # + B*D*L for the z gate.
        bdl = self.batch * self.dim * self.length
        return 9 * bdl * self.d_state + bdl * int(self.has_d) + bdl * int(self.has_z)


_RECORDERS: list[list[ScanCall]] = []
_SKIPPING: list[bool] = []  # one entry per active record_scans(compute=False)


@contextlib.contextmanager
def record_scans(compute: bool = True) -> Iterator[list[ScanCall]]:
    """Collect a `ScanCall` for every `selective_scan` run inside the block (nesting is fine).

    compute=False: the scans inside return zeros of the right shape and dtype without running,
    for MAC counting, which needs shapes only (their MACs come from the formula).
    """
    calls: list[ScanCall] = []
    _RECORDERS.append(calls)
    if not compute:
        _SKIPPING.append(True)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)
        if not compute:
            _SKIPPING.pop()


# --------------------------------------------------------------------------- chunked linear scan
def _scan_forward_(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Solve h_t = a_t * h_{t-1} + b_t from h_{-1} = 0, in place in b.

    a, b, p: (T, nC, *S), time-major: step t of chunk c is global step c*T + t. p receives the
    decay accumulated within each chunk (p may be a itself). Returns a view of the last state.
    """
    at, bt, pt = a.unbind(0), b.unbind(0), p.unbind(0)  # per-step views, made once
    if p is not a:
        pt[0].copy_(at[0])
    for t in range(1, len(at)):  # every chunk at once, each from a zero state
        bt[t].addcmul_(at[t], bt[t - 1])
        torch.mul(at[t], pt[t - 1], out=pt[t])
    hand, decay = b[-1].unbind(0), p[-1].unbind(0)
    for c in range(1, len(hand)):  # hand each chunk's final state on to the next chunk
        hand[c].addcmul_(decay[c], hand[c - 1])
    b[:-1, 1:].addcmul_(p[:-1, 1:], b[-1, :-1].unsqueeze(0))  # the other steps receive it too
    return b[-1, -1]


def _scan_reverse_(a: torch.Tensor, g: torch.Tensor, q: torch.Tensor) -> None:
    """Solve g_t = a_{t+1} * g_{t+1} + g_t backwards from the end, in place in g.

    a: the forward decays (kept), q: a work buffer for the decay accumulated from step t to
    the first step of the next chunk. Same layout as _scan_forward_.
    """
    q[-1, :-1] = a[0, 1:]
    q[-1, -1] = 1.0  # nothing follows the last step; keeps q finite
    at, gt, qt = a.unbind(0), g.unbind(0), q.unbind(0)
    for t in range(len(at) - 2, -1, -1):
        gt[t].addcmul_(at[t + 1], gt[t + 1])
        torch.mul(at[t + 1], qt[t + 1], out=qt[t])
    hand, decay = g[0].unbind(0), q[0].unbind(0)
    for c in range(len(hand) - 2, -1, -1):
        hand[c].addcmul_(decay[c], hand[c + 1])
    g[1:, :-1].addcmul_(q[1:, :-1], g[0, 1:].unsqueeze(0))


def _chunk_len(length: int) -> int:
    """Steps per chunk: ~sqrt(L) balances the two Python loops (T steps, then nC chunks)."""
    return max(1, math.isqrt(length))


def _to_time_major(x: torch.Tensor, T: int) -> torch.Tensor:
    """(*lead, L) -> contiguous (T, nC, *lead), zero-padded to nC*T steps."""
    x = F.pad(x, (0, -x.shape[-1] % T)).unflatten(-1, (-1, T))
    return x.permute(x.dim() - 1, x.dim() - 2, *range(x.dim() - 2)).contiguous()


def _from_time_major(x: torch.Tensor, length: int) -> torch.Tensor:
    """(T, nC, *lead) -> (*lead, length)."""
    return x.permute(*range(2, x.dim()), 1, 0).flatten(-2)[..., :length]


def _blocks(batch: int, width: int, per_item: int) -> list[tuple[slice, slice]]:
    """(batch, channel) slices covering batch x width, about equal, with at most _BLOCK_ELEMS work
    elements each (per_item per batch item and channel), or one channel when that is more."""
    if width * per_item <= _BLOCK_ELEMS:
        n = math.ceil(batch / max(1, _BLOCK_ELEMS // (width * per_item)))
        step = math.ceil(batch / n)
        return [(slice(b, min(b + step, batch)), slice(0, width)) for b in range(0, batch, step)]
    n = math.ceil(width / max(1, _BLOCK_ELEMS // per_item))
    step = math.ceil(width / n)
    return [(slice(b, b + 1), slice(w, min(w + step, width))) for b in range(batch) for w in range(0, width, step)]


def _buffers(n: int, like: torch.Tensor, blocks: list[tuple[slice, slice]], per_item: int) -> list[torch.Tensor]:
    """n flat work buffers, each large enough for the largest block; reused for every block."""
    numel = max((bs.stop - bs.start) * (hs.stop - hs.start) for bs, hs in blocks) * per_item
    return [like.new_empty(numel) for _ in range(n)]


def _view(buf: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return buf[:math.prod(shape)].view(shape)


def _torch_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                Cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked PyTorch scan, time-major: y_t = sum_n C_t h_t, h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t.

    u, delta: (T, nC, Bt, G, H) fp32, zero past the sequence end; A: (G, H, N);
    Bm, Cm: (T, nC, Bt, G, N). Returns y (T, nC, Bt, G, H) and the last state (Bt, G, H, N).
    """
    T, nC, Bt, G, H = u.shape
    N = A.shape[-1]
    per_item = T * nC * G * N
    blocks = _blocks(Bt, H, per_item)
    y, last = torch.empty_like(u), u.new_empty(Bt, G, H, N)
    bufs = _buffers(2, u, blocks, per_item)
    for bs, hs in blocks:
        dt = delta[:, :, bs, :, hs, None]  # (T, nC, b, G, h, 1)
        a, h = (_view(buf, dt.shape[:-1] + (N,)) for buf in bufs)
        torch.mul(dt, A[:, hs], out=a).exp_()
        torch.mul(dt * u[:, :, bs, :, hs, None], Bm[:, :, bs, :, None], out=h)
        last[bs, :, hs] = _scan_forward_(a, h, a)
        y[:, :, bs, :, hs] = torch.matmul(h, Cm[:, :, bs, :, :, None]).squeeze(-1)  # sum_n h C
    return y, last


def _torch_scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                         Cm: torch.Tensor, gy: torch.Tensor, glast: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Grads of u, delta, A, Bm, Cm given those of y and of the last state, time-major as _torch_scan.

    Recomputes the states (nothing of size steps x N is kept from forward), then runs the same
    chunked scan in reverse for g_t = dL/dh_t.
    """
    T, nC, Bt, G, H = u.shape
    N = A.shape[-1]
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA, dB, dC = torch.zeros_like(A), torch.zeros_like(Bm), torch.zeros_like(Cm)
    per_item = T * nC * G * N
    blocks = _blocks(Bt, H, per_item)
    bufs = _buffers(4, u, blocks, per_item)
    for bs, hs in blocks:
        dt, ub, gyb = delta[:, :, bs, :, hs, None], u[:, :, bs, :, hs, None], gy[:, :, bs, :, hs, None]
        Ab, Bb, Cb = A[:, hs], Bm[:, :, bs, :, None], Cm[:, :, bs, :, None]  # B, C: (T, nC, b, G, 1, N)
        dtu = dt * ub
        a, h, g, w = (_view(buf, dt.shape[:-1] + (N,)) for buf in bufs)
        torch.mul(dt, Ab, out=a).exp_()  # a_t = exp(delta_t A), kept until the end
        torch.mul(dtu, Bb, out=h)
        _scan_forward_(a, h, w)  # h: the states h_t
        # g_t = dL/dh_t = a_{t+1} g_{t+1} + C_t gy_t, plus the last state's grad at the end;
        # padded steps carry the state unchanged (a=1, b=0), so it may enter at the padded end
        torch.mul(gyb, Cb, out=g)
        g[-1, -1] += glast[bs, :, hs]
        _scan_reverse_(a, g, w)
        dC[:, :, bs] += torch.matmul(gyb.transpose(-1, -2), h).squeeze(-2)  # sum_h gy h
        # through b_t = delta_t u_t B_t
        gB = torch.matmul(g, Bb.transpose(-1, -2))  # sum_n g B: (T, nC, b, G, h, 1)
        du[:, :, bs, :, hs] = (gB * dt).squeeze(-1)
        ddelta_b = gB * ub
        dB[:, :, bs] += torch.matmul(dtu.transpose(-1, -2), g).squeeze(-2)  # sum_h delta u g
        # through a_t: the grad of (delta_t A) is g_t a_t h_{t-1}
        a.mul_(g)
        a[1:].mul_(h[:-1])
        a[0, 1:].mul_(h[-1, :-1])
        a[0, 0].zero_()
        dA[:, hs] += torch.mul(a, dt, out=w).sum((0, 1, 2))
        ddelta[:, :, bs, :, hs] = (ddelta_b + torch.mul(a, Ab, out=w).sum(-1, keepdim=True)).squeeze(-1)
    return du, ddelta, dA, dB, dC


# --------------------------------------------------------------------------- the custom op
# The scan is a torch.library custom op: autograd sees one node with a hand-written backward,
# jit tracing (fvcore) records one opaque `ablate::selective_scan` node instead of thousands of
# loop steps, and the fake (meta) kernel gives shapes without computing. Its CPU/CUDA body runs
# the compiled kernel (csrc/selective_scan.cpp) or the chunked PyTorch scan, see scan_backend().
#
# One op serves the 1-D scan and the 2-D mixer's directions: group g walks the positions
# order[g] (a permutation of 0..L-1; None: 0, 1, ..., L-1) of input group g % Gu, so the mixer
# passes its token map and the directions' orders instead of K flipped copies; with Gu < G
# several groups walk one input and their outputs are summed, as the mixer's directions are.
def _walked(x: torch.Tensor, order: torch.Tensor | None, groups: int) -> torch.Tensor:
    """(Bt, Gu, rows, L) position-indexed, Gu dividing groups -> (Bt, groups, rows, L): step t of
    group g at x[:, g % Gu, :, order[g, t]]."""
    if x.shape[1] != groups:
        x = x.repeat(1, groups // x.shape[1], 1, 1)
    return x if order is None else x.gather(-1, order.long()[None, :, None].expand(x.shape))


def _placed(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """The inverse of _walked: (Bt, G, rows, L) in step order -> position-indexed."""
    return x if order is None else x.gather(-1, order.long().argsort(-1)[None, :, None].expand(x.shape))


def _summed_to(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(Bt, G, ...) -> (Bt, groups, ...): the walks of each input group (g % groups) summed."""
    return x.unflatten(1, (-1, groups)).sum(1) if groups < x.shape[1] else x


def _order_or_identity(order: torch.Tensor | None, groups: int, length: int) -> torch.Tensor:
    """The kernel's (G, L) int32 orders: `order`, or every group walking 0..L-1."""
    return order if order is not None else torch.arange(length, dtype=torch.int32).expand(groups, length).contiguous()


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device` (where autocast exists): the scan and its inputs stay fp32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@torch.library.custom_op('ablate::selective_scan', mutates_args=())
def _scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
          D: torch.Tensor, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u: (Bt, Gu, H, L) fp32, group g reading u group g % Gu; delta: (Bt, G, H, L)
    (dense, any stride order); A: (G, H, N); Bm, Cm: (Bt, G, L, N), unit stride over N;
    D: (G, H); order: (G, L) int32 or None.

    Returns y = sum_n C_t h_t + D u_t at each position (Bt, Gu, H, L, summed over the groups when
    shared), the last state (Bt, G, H, N), and what backward starts from besides the inputs: the
    compiled kernel's states before each of its chunks (Bt, G, H, ceil(L / chunk), N), or an empty
    tensor from the torch path, whose backward recomputes all.
    """
    G, L = delta.shape[1], delta.shape[-1]
    if _cpu_backend(u.device) == 'cpp':
        return _compiled()[0].fwd(u, delta, A, Bm, Cm, D, _order_or_identity(order, G, L))
    T = _chunk_len(L)
    walked = [_walked(t, order, G) for t in (u, delta, Bm.transpose(-1, -2), Cm.transpose(-1, -2))]
    y, last = _torch_scan(*(_to_time_major(t, T) for t in walked[:2]), A,
                          *(_to_time_major(t, T) for t in walked[2:]))
    y = _placed(_from_time_major(y, L), order) + D[..., None] * u
    return _summed_to(y, u.shape[1]).contiguous(), last, u.new_empty(0)


@torch.library.custom_op('ablate::selective_scan_backward', mutates_args=())
def _scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                   D: torch.Tensor, order: torch.Tensor | None, states: torch.Tensor, gy: torch.Tensor,
                   glast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor]:
    """Grads of u, delta, A, Bm, Cm, D (layouts of _scan; ddelta has delta's strides) given those of
    y and of the last state; states: _scan's third output."""
    G, L = delta.shape[1], delta.shape[-1]
    if _cpu_backend(u.device) == 'cpp':
        return _compiled()[0].bwd(u, delta, A, Bm, Cm, D, _order_or_identity(order, G, L), states, gy, glast)
    T = _chunk_len(L)
    walked = [_walked(t, order, G) for t in (u, delta, Bm.transpose(-1, -2), Cm.transpose(-1, -2), gy)]
    du, dd, dA, dB, dC = _torch_scan_backward(*(_to_time_major(t, T) for t in walked[:2]), A,
                                              *(_to_time_major(t, T) for t in walked[2:]), glast)
    du, dd, dB, dC = (_placed(_from_time_major(t, L), order) for t in (du, dd, dB, dC))
    gy_g = _walked(gy, None, G)
    du = _summed_to(du + gy_g * D[..., None], u.shape[1]).contiguous()
    dD = (gy_g * _walked(u, None, G)).sum((0, 3))
    return (du, torch.empty_like(delta).copy_(dd), dA, dB.transpose(-1, -2).contiguous(),
            dC.transpose(-1, -2).contiguous(), dD)


@_scan.register_fake
def _(u, delta, A, Bm, Cm, D, order):
    Bt, G, H, L = delta.shape
    N = A.shape[-1]
    states = (u.new_empty(Bt, G, H, -(-L // _compiled()[0].chunk()), N) if _cpu_backend(u.device) == 'cpp'
              else u.new_empty(0))
    return u.new_empty(u.shape), u.new_empty(Bt, G, H, N), states


@_scan_backward.register_fake
def _(u, delta, A, Bm, Cm, D, order, states, gy, glast):
    return (u.new_empty(u.shape), torch.empty_like(delta), *(t.new_empty(t.shape) for t in (A, Bm, Cm, D)))


def _scan_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output[2])  # order may be None


def _scan_grad(ctx, gy, glast, gstates):
    u, delta, A, Bm, Cm, D, order, states = ctx.saved_tensors
    gy = torch.zeros_like(u) if gy is None else gy
    glast = delta.new_zeros(delta.shape[:3] + (A.shape[-1],)) if glast is None else glast
    return (*_scan_backward(u, delta, A, Bm, Cm, D, order, states, gy.contiguous(), glast.contiguous()), None)


_scan.register_autograd(_scan_grad, setup_context=_scan_setup)


@torch.library.custom_op('ablate::skipped_selective_scan', mutates_args=())
def _skipped_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None) -> torch.Tensor:
    """Zeros shaped like u, standing in for a scan under record_scans(compute=False). It takes all
    the scan's inputs so that a jit trace keeps the ops producing them (fvcore counts x_proj and
    dt_proj; an unused output would be pruned from the graph)."""
    return torch.zeros_like(u)


@_skipped_scan.register_fake
def _(u, delta, A, B, C, D, z, delta_bias):
    return torch.empty_like(u)


# --------------------------------------------------------------------------- backends
SCAN_BACKENDS = ('auto', 'cpp', 'torch', 'cuda')
_BACKEND_ENV = 'ABLATE_SCAN_BACKEND'
_SOURCE = Path(__file__).with_name('csrc') / 'selective_scan.cpp'
# -march=native is safe because the build is cached per CPU (its flags are in the name below);
# no -ffast-math: the kernel vectorises explicitly. -fopenmp: at::parallel_for is an inline
# `omp parallel` in torch's headers, serial without it (torch's own OpenMP runtime, thread count).
_CFLAGS = ['-O3', '-march=native', '-fopenmp']
log = logging.getLogger(__name__)
_LOGGED: set[tuple[str, str]] = set()


def _requested_backend() -> str:
    value = os.environ.get(_BACKEND_ENV, 'auto')
    if value not in SCAN_BACKENDS:
        raise ValueError(f"{_BACKEND_ENV}={value!r} is not a scan backend; choose from: {', '.join(SCAN_BACKENDS)}")
    return value


def _cpu_flags() -> str:
    try:
        return next(line for line in Path('/proc/cpuinfo').read_text().splitlines() if line.startswith('flags'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _build_extension() -> Any:
    """JIT-compile csrc/selective_scan.cpp (once; cached under torch's extensions dir,
    $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions) and return its op namespace."""
    cpp_log = logging.getLogger('torch.utils.cpp_extension')
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)  # "No CUDA runtime is found" on CPU-only machines: irrelevant here
    try:
        from torch.utils import cpp_extension

        # the name changes with the source, flags and CPU, so worktrees and nodes never share a stale build
        tag = hashlib.sha1(_SOURCE.read_bytes() + ' '.join(_CFLAGS).encode() + _cpu_flags().encode()).hexdigest()
        name = f'ablate_scan_{tag[:12]}'
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))  # torch's own choice of folder
        with _sole_builder(build_dir):
            cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=['-fopenmp'],
                               build_directory=str(build_dir), is_python_module=False, verbose=False)
    finally:
        cpp_log.setLevel(level)
    return torch.ops.ablate_scan_cpp


@contextlib.contextmanager
def _sole_builder(build_dir: Path) -> Iterator[None]:
    """Hold an OS lock on `<build_dir>.ablate-lock` while torch builds or loads the kernel.

    torch < 2.14 guards a build with a file whose mere existence blocks (`build_dir/lock`); a build
    killed mid-way (Ctrl-C, a time-out) leaves it behind and every later import waits on it forever.
    The kernel releases our lock when its holder dies, and every builder of this extension takes it
    first, so a `lock` file found while we hold it has no living owner: it is removed, and the
    kernel rebuilt when its library is missing.
    """
    import fcntl

    with open(build_dir.with_name(build_dir.name + '.ablate-lock'), 'w') as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info('another process is building the selective scan in %s; waiting for it', build_dir)
            fcntl.flock(guard, fcntl.LOCK_EX)
        stale = build_dir / 'lock'
        if stale.exists():
            stale.unlink()
            if not any(build_dir.glob('*.so')):
                log.warning('removed a stale build lock %s left by a killed build; rebuilding the selective scan',
                            stale)
        yield  # the lock is released when the file closes


@functools.lru_cache(maxsize=1)
def _compiled() -> tuple[Any, str | None]:
    """(op namespace, None) once the kernel is built, or (None, why not); tried once per process."""
    try:
        return _build_extension(), None
    except Exception as exc:  # any build or load failure: a compiler, ninja or header missing
        reason = (str(exc).strip().splitlines() or [''])[-1][:300]
        return None, f'{type(exc).__name__}: {reason}'


def _cpu_backend(device: torch.device) -> str:
    """'cpp' or 'torch': the implementation of the custom op's body for tensors on `device`."""
    return scan_backend(device) if device.type == 'cpu' else 'torch'


@functools.lru_cache(maxsize=1)
def _cuda_kernel() -> Callable | None:
    """mamba_ssm's fused selective scan, or None when mamba_ssm is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def scan_backend(device: torch.device | str = 'cpu') -> str:
    """The implementation `selective_scan` uses for tensors on `device`: 'mamba_ssm', 'cpp' or 'torch'.

    Chosen by $ABLATE_SCAN_BACKEND: `auto` (default): mamba_ssm on CUDA tensors when installed
    (else the chunked torch scan there), the compiled kernel on CPU when it builds (else one
    warning with the reason, then the chunked torch scan); `cpp`: the compiled kernel, an error
    when it cannot be built or the tensors are not on the CPU; `torch`: the chunked torch scan
    everywhere; `cuda`: mamba_ssm on CUDA tensors, an error when it is not installed (CPU
    tensors as `auto`).
    """
    requested, kind = _requested_backend(), torch.device(device).type
    if kind == 'cuda' and requested in ('auto', 'cuda'):
        if _cuda_kernel() is None and requested == 'cuda':
            raise RuntimeError(f'{_BACKEND_ENV}=cuda but mamba_ssm is not importable')
        name = 'mamba_ssm' if _cuda_kernel() is not None else 'torch'
    elif requested == 'torch':
        name = 'torch'
    elif kind != 'cpu':
        if requested == 'cpp':
            raise RuntimeError(f'{_BACKEND_ENV}=cpp runs on CPU tensors only, got tensors on {device}')
        name = 'torch'
    else:
        ops, reason = _compiled()
        if ops is None and requested == 'cpp':
            raise RuntimeError(f'{_BACKEND_ENV}=cpp but the compiled selective scan cannot be built: {reason}')
        if ops is None and ('failed', reason) not in _LOGGED:
            _LOGGED.add(('failed', reason))
            log.warning('selective scan: the compiled CPU kernel cannot be built (%s); using the chunked torch '
                        'scan', reason)
        name = 'cpp' if ops is not None else 'torch'
    if (name, kind) not in _LOGGED:
        _LOGGED.add((name, kind))
        log.info('selective scan backend for %s tensors: %s', kind, name)
    return name


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Mamba's selective scan; same signature, layout and semantics as mamba_ssm.selective_scan_fn.

    Returns out (B, D, L) in u's dtype, and with return_last_state the fp32 state h_L (B, D, N).
    """
    if A.is_complex() or A.dim() != 2:
        raise ValueError(f'selective_scan: A must be a real (D, N) tensor, got shape {tuple(A.shape)} '
                         f'dtype {A.dtype}')
    for key, m in (('B', B), ('C', C)):
        if m.dim() not in (3, 4):
            raise ValueError(f'selective_scan: {key}.shape={tuple(m.shape)} is not supported; '
                             f'pass (batch, N, L) or (batch, G, N, L)')
    batch, dim, length = map(int, u.shape)  # plain ints even under jit tracing (fvcore)
    groups = [int(m.shape[1]) if m.dim() == 4 else 1 for m in (B, C)]
    if dim % max(groups) or max(groups) % min(groups):
        raise ValueError(f'selective_scan: the groups of B {tuple(B.shape)} and C {tuple(C.shape)} must divide '
                         f'D={dim} and each other')
    for calls in _RECORDERS:
        calls.append(ScanCall(batch, dim, length, int(A.shape[1]), D is not None, z is not None))
    if _SKIPPING:
        out = _skipped_scan(u, delta, A, B, C, D, z, delta_bias)
        return (out, u.new_zeros(batch, dim, A.shape[1], dtype=torch.float32)) if return_last_state else out
    if scan_backend(u.device) == 'mamba_ssm':  # also validates $ABLATE_SCAN_BACKEND
        return _cuda_kernel()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    dtype_in = u.dtype
    with _no_autocast(u.device):  # the scan runs in fp32 like selective_scan_ref
        u, delta, A = u.float(), delta.float(), A.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        # B and C share one group structure inside the kernel; a 3-D or coarser one is expanded
        # to the finer group count (cheap: these are (batch, G, N, L), not per channel).
        G = max(groups)
        Dg = D.float() if D is not None else u.new_zeros(dim)
        y, last, _ = _scan(u.unflatten(1, (G, -1)).contiguous(), delta.unflatten(1, (G, -1)).contiguous(),
                           A.unflatten(0, (G, -1)).contiguous(), _groups(B.float(), G), _groups(C.float(), G),
                           Dg.unflatten(0, (G, -1)).contiguous(), None)
        out = y.flatten(1, 2)
        if z is not None:
            out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, last.flatten(1, 2)) if return_last_state else out


def _groups(m: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, N, L) or (b, g, N, L) -> (b, groups, L, N) contiguous, the kernel's layout (the N states
    of a step together); each of the g groups repeats groups/g times."""
    if m.dim() == 3:
        m = m.unsqueeze(1)
    m = m.repeat_interleave(groups // m.shape[1], dim=1) if m.shape[1] != groups else m
    return m.transpose(-1, -2).contiguous()


# --------------------------------------------------------------------------- 2-D token mixer
def _to_sequences(x: torch.Tensor, scan: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, C, L): the token sequence of each scan direction."""
    rows = x.flatten(2)  # row-major
    if scan == 'raster':
        seqs = [rows]
    elif scan == 'bidirectional':
        seqs = [rows, rows.flip(-1)]
    else:  # cross: row-major, column-major, and both reversed
        cols = x.transpose(2, 3).flatten(2)
        seqs = [rows, cols, rows.flip(-1), cols.flip(-1)]
    return torch.stack(seqs, dim=1)


def _from_sequences(y: torch.Tensor, size: tuple[int, int], scan: str) -> torch.Tensor:
    """(B, K, C, L) -> (B, C, H, W): back to row-major, directions summed (cross) or averaged."""
    H, W = size
    if scan == 'raster':
        rows = y[:, 0]
    elif scan == 'bidirectional':
        rows = (y[:, 0] + y[:, 1].flip(-1)) / 2
    else:
        rows = y[:, 0] + y[:, 2].flip(-1)
        cols = y[:, 1] + y[:, 3].flip(-1)
        rows = rows + cols.unflatten(-1, (W, H)).transpose(-1, -2).flatten(-2)
    return rows.unflatten(-1, (H, W))


@functools.lru_cache(maxsize=64)
def _walk_orders(directions: int, maps: int, length: int) -> torch.Tensor:
    """(directions, length) int32: direction k walks its map (k % maps) forwards when k < maps, else
    backwards; with maps = the row-major and column-major token maps this is _to_sequences' order."""
    forward = torch.arange(length, dtype=torch.int32)
    return torch.stack([forward if k < maps else forward.flip(0) for k in range(directions)])


# a leaf of torch.fx traces (timm's feature extraction): its scan takes Python ints from shapes
@register_notrace_module
class SelectiveSSM2d(nn.Module):
    """Mamba's selective SSM (S6) over a 2-D token grid, one parameter set per scan direction.

    Per direction k (Mamba defaults): x_proj (C -> dt_rank + 2N, no bias) gives dt, B, C per
    token; dt_proj (dt_rank -> C, bias) gives delta; A = -exp(A_log) (C, N); D skip (C,).
    Parameters are stacked over the K directions so one scan call runs them all (G = K groups).
    Input and output (B, C, H, W).
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            dt_rank: int | None = None,
            scan: str = 'cross',
            dt_min: float = 1e-3,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        K = scan_directions(scan)
        if d_state < 1:
            raise ValueError(f'model.d_state={d_state!r} must be a positive integer')
        if dt_rank is not None and dt_rank < 1:
            raise ValueError(f'model.dt_rank={dt_rank!r} must be a positive integer or None (ceil(C/16))')
        self.dim, self.d_state, self.scan = dim, d_state, scan
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        # (out, in) per direction, like nn.Linear weights
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, dim, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(K, dim, self.dt_rank, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(K * dim, **dd))
        self.A_log = nn.Parameter(torch.empty(K * dim, d_state, **dd))
        self.D = nn.Parameter(torch.empty(K * dim, **dd))
        self.A_log._no_weight_decay = True  # Mamba's marker; MambaOut.no_weight_decay() collects it
        self.D._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # x_proj: nn.Linear's default, U(+-1/sqrt(fan_in)); dt_proj weight U(+-dt_rank^-0.5)
        nn.init.uniform_(self.x_proj_weight, -self.dim ** -0.5, self.dim ** -0.5)
        nn.init.uniform_(self.dt_proj_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        # dt ~ logUniform[dt_min, dt_max] (floored); the bias is its inverse softplus
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_proj_bias) * (hi - lo) + lo).clamp(min=self.dt_init_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A_n = -n
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if scan_backend(x.device) == 'cpp' and not _SKIPPING:
            return self._forward_walks(x)
        size = x.shape[-2:]
        N, R = self.d_state, self.dt_rank
        xs = _to_sequences(x, self.scan)  # (B, K, C, L)
        # per-token projections as batched matmuls (counted by fvcore as aten::matmul)
        x_dbl = torch.matmul(xs.transpose(-1, -2), self.x_proj_weight.transpose(-1, -2))  # (B, K, L, R+2N)
        dt, Bs, Cs = x_dbl.split((R, N, N), dim=-1)
        dt = torch.matmul(dt, self.dt_proj_weight.transpose(-1, -2))  # (B, K, L, C)
        y = selective_scan(
            xs.flatten(1, 2),
            dt.transpose(-1, -2).flatten(1, 2),
            -torch.exp(self.A_log.float()),
            Bs.transpose(-1, -2),  # (B, K, N, L): direction k is group k
            Cs.transpose(-1, -2),
            self.D.float(),
            delta_bias=self.dt_proj_bias.float(),
            delta_softplus=True,
        )
        return _from_sequences(y.unflatten(1, (-1, self.dim)), size, self.scan)

    def _forward_walks(self, x: torch.Tensor) -> torch.Tensor:
        """forward() by the compiled kernel walking the token maps in place: direction k reads map
        k % M forwards or backwards (M = 2 maps for cross: row- and column-major; else 1), so the
        K directions need M copies instead of K, and no merge. Same values as forward()."""
        Bt, C, H, W = x.shape
        K, N, R = scan_directions(self.scan), self.d_state, self.dt_rank
        for calls in _RECORDERS:
            calls.append(ScanCall(Bt, K * C, H * W, N, True, False))
        maps = [x.flatten(2)] + ([x.transpose(2, 3).flatten(2)] if self.scan == 'cross' else [])
        M = len(maps)
        tokens = torch.stack(maps, 1)  # (B, M, C, L)
        # projections of direction k = i*M + j from map j: (B, 1, M, L, C) @ (K/M, M, C, R+2N)
        x_dbl = torch.matmul(tokens.transpose(-1, -2).unsqueeze(1),
                             self.x_proj_weight.unflatten(0, (-1, M)).transpose(-1, -2)).flatten(1, 2)
        dt, Bs, Cs = x_dbl.split((R, N, N), dim=-1)  # (B, K, L, .) views; B, C stay in this layout
        dt = torch.matmul(self.dt_proj_weight, dt.transpose(-1, -2))  # (B, K, C, L)
        with _no_autocast(x.device):  # the scan runs in fp32
            delta = F.softplus(dt.float() + self.dt_proj_bias.float().view(K, C, 1))
            y, _, _ = _scan(tokens.float(), delta, -torch.exp(self.A_log.float()).view(K, C, N), Bs.float(),
                            Cs.float(), self.D.float().view(K, C), _walk_orders(K, M, H * W))
        out = y[:, 0].unflatten(-1, (H, W))
        if M == 2:
            out = out + y[:, 1].unflatten(-1, (W, H)).transpose(-1, -2)
        return (out / 2 if self.scan == 'bidirectional' else out).to(x.dtype)  # cross sums its directions

    def extra_repr(self) -> str:
        return f'dim={self.dim}, d_state={self.d_state}, dt_rank={self.dt_rank}, scan={self.scan!r}'
