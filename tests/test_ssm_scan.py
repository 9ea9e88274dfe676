"""The selective scan against a plain sequential reference, and the 2-D SSM mixer's wiring.

Value and gradient tests run once per CPU backend: the compiled kernel ('cpp') and the chunked
PyTorch scan ('torch'), forced through $ABLATE_SCAN_BACKEND.
"""
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ablate.models import ssm as ssm_mod
from ablate.models.ssm import SelectiveSSM2d, record_scans, scan_backend, selective_scan


@pytest.fixture(params=['cpp', 'torch'])
def backend(request, monkeypatch):
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', request.param)
    assert scan_backend() == request.param
    return request.param


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm's selective_scan_ref semantics, one step at a time, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return (y, h) if return_last_state else y


def make_inputs(batch=2, dim=4, length=7, d_state=16, groups=None, with_d=True, with_z=True, with_bias=True,
                seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_bc = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    inputs = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5 - 1.0,
        A=-torch.rand(dim, d_state, generator=g) * 4 - 0.1,
        B=torch.randn(shape_bc, generator=g),
        C=torch.randn(shape_bc, generator=g),
        D=torch.randn(dim, generator=g) if with_d else None,
        z=torch.randn(batch, dim, length, generator=g) if with_z else None,
        delta_bias=torch.randn(dim, generator=g) * 0.5 if with_bias else None,
    )
    for t in inputs.values():
        if t is not None:
            t.requires_grad_(True)
    return inputs


def assert_rel_close(actual, expected, rtol=1e-5, what=''):
    """Max abs error within rtol of the reference's max magnitude (float64 reference)."""
    expected = expected.to(actual.dtype)
    scale = expected.abs().max().clamp(min=1e-12)
    err = (actual - expected).abs().max()
    assert err <= rtol * scale, f'{what}: max err {err:.3g} vs scale {scale:.3g}'


def check_against_reference(inputs, delta_softplus=True, last=True):
    out, h = selective_scan(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    ref, ref_h = reference_scan(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    assert out.shape == ref.shape and out.dtype == inputs['u'].dtype
    assert_rel_close(out, ref, what='out')
    assert_rel_close(h, ref_h, what='last state')
    names = [k for k, v in inputs.items() if v is not None]
    tensors = [inputs[k] for k in names]
    g = torch.Generator().manual_seed(1)
    w, wh = torch.randn(out.shape, generator=g), torch.randn(h.shape, generator=g)
    loss = (out * w).sum() + ((h * wh).sum() if last else 0)
    loss_ref = (ref * w.double()).sum() + ((ref_h * wh.double()).sum() if last else 0)
    grads = torch.autograd.grad(loss, tensors)
    grads_ref = torch.autograd.grad(loss_ref, tensors)
    for name, got, want in zip(names, grads, grads_ref):
        assert got.shape == inputs[name].shape
        assert_rel_close(got, want, what=f'grad {name}')


@pytest.mark.parametrize('length', [1, 2, 7, 33, 101])
@pytest.mark.parametrize('d_state', [1, 16, 32])  # 1: one lane at a time; 16, 32: one or two vectors
def test_values_and_grads_match_reference(length, d_state, backend):
    check_against_reference(make_inputs(length=length, d_state=d_state))


@pytest.mark.parametrize('dim,groups', [(5, 1), (7, 1), (9, 1), (12, 2)])
def test_channel_counts_around_the_kernels_block_of_four(dim, groups, backend):
    # the compiled kernel walks 4 channels of a group together, and the rest one by one; 70 steps
    # span three backward chunks of 32, the last one partial
    check_against_reference(make_inputs(dim=dim, length=70, groups=groups))


@pytest.mark.parametrize('with_d,with_z,with_bias,softplus', [
    (False, False, False, False),
    (True, False, False, True),
    (False, True, False, True),
    (False, False, True, True),
])
def test_optional_inputs(with_d, with_z, with_bias, softplus, backend):
    inputs = make_inputs(length=13, with_d=with_d, with_z=with_z, with_bias=with_bias)
    if not softplus:  # delta must stay positive to be a step size
        inputs['delta'] = (inputs['delta'].detach().abs() + 0.01).requires_grad_(True)
    check_against_reference(inputs, delta_softplus=softplus)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_grouped_b_and_c(groups, backend):
    check_against_reference(make_inputs(dim=8, length=19, groups=groups))


def test_b_and_c_with_different_groupings(backend):
    inputs = make_inputs(dim=8, length=9, groups=4)
    inputs['B'] = torch.randn(2, 16, 9, requires_grad=True)  # shared by all channels
    check_against_reference(inputs)


def test_grad_without_last_state(backend):
    inputs = make_inputs(length=11)
    out = selective_scan(**inputs, delta_softplus=True)
    ref = reference_scan(**inputs, delta_softplus=True)
    w = torch.randn(out.shape)
    got = torch.autograd.grad((out * w).sum(), [inputs['u'], inputs['A']])
    want = torch.autograd.grad((ref * w.double()).sum(), [inputs['u'], inputs['A']])
    for a, b in zip(got, want):
        assert_rel_close(a, b)


@pytest.mark.parametrize('budget', [40, 700])
def test_blocking_gives_the_same_result(monkeypatch, budget):
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'torch')  # blocks are the chunked torch scan's
    # a tiny work budget splits batch and channels into many blocks, even below one channel
    inputs = make_inputs(batch=3, dim=6, length=23, groups=2)
    expected = selective_scan(**inputs, delta_softplus=True)
    expected_grads = torch.autograd.grad(expected.sum(), [inputs['u'], inputs['A'], inputs['B']])
    monkeypatch.setattr(ssm_mod, '_BLOCK_ELEMS', budget)
    assert len(ssm_mod._blocks(3, 3, 23 * 2 * 16)) > 3
    out = selective_scan(**inputs, delta_softplus=True)
    grads = torch.autograd.grad(out.sum(), [inputs['u'], inputs['A'], inputs['B']])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_long_sequence_with_strong_decay_is_finite_and_exact(backend):
    # cumulative decays within a chunk underflow far below fp32's range: no inf/nan, no drift
    inputs = make_inputs(batch=1, dim=3, length=1500, d_state=4, with_z=False)
    inputs['delta'] = (torch.rand(1, 3, 1500) * 6).requires_grad_(True)  # softplus ~ up to 6 per step
    check_against_reference(inputs)


def test_low_precision_input_runs_in_fp32(backend):
    inputs = make_inputs(length=9, with_z=False)
    half = {k: (v.detach().bfloat16() if k in ('u', 'delta', 'B', 'C') else v.detach())
            for k, v in inputs.items() if v is not None}
    out = selective_scan(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    ref = reference_scan(**{k: (v.float() if v is not None else None) for k, v in half.items()},
                         delta_softplus=True)
    assert_rel_close(out.float(), ref, rtol=1e-2)


def op_inputs(Bt: int, G: int, H: int, L: int, N: int, walks: bool, seed: int = 0) -> tuple:
    """Inputs of the `ablate::selective_scan` op. walks=False: contiguous, one input per group, the
    identity order. walks=True: the 2-D mixer's layout: one u shared by the G groups, each walking
    its own random permutation, delta a transposed view, Bm and Cm column slices of one tensor."""
    g = torch.Generator().manual_seed(seed)
    A = (-torch.rand(G, H, N, generator=g)).requires_grad_()
    D = torch.randn(G, H, generator=g).requires_grad_()
    if not walks:
        return (torch.randn(Bt, G, H, L, generator=g).requires_grad_(),
                (torch.rand(Bt, G, H, L, generator=g) + 0.1).requires_grad_(), A,
                torch.randn(Bt, G, L, N, generator=g).requires_grad_(),
                torch.randn(Bt, G, L, N, generator=g).requires_grad_(), D, None)
    u = torch.randn(Bt, 1, H, L, generator=g).requires_grad_()
    delta_lh = (torch.rand(Bt, G, L, H, generator=g) + 0.1).requires_grad_()
    bc = torch.randn(Bt, G, L, 3 * N, generator=g).requires_grad_()
    order = torch.stack([torch.randperm(L, generator=g) for _ in range(G)]).int()
    return u, delta_lh.transpose(-1, -2), A, bc[..., :N], bc[..., 2 * N:], D, order


@pytest.mark.parametrize('walks', [False, True])
@pytest.mark.parametrize('length,d_state', [(5, 4), (70, 16)])  # 70: two backward chunks of the kernel
def test_custom_op_registration_is_consistent(backend, length, d_state, walks):
    torch.library.opcheck(ssm_mod._scan, op_inputs(2, 2, 3, length, d_state, walks))


def test_walks_equal_the_reference_on_gathered_sequences(backend):
    """Group g walking order[g] over a shared u equals the reference scan of the gathered sequence,
    its outputs put back at their positions and summed over the groups; gradients included."""
    u, delta, A, Bm, Cm, D, order = op_inputs(2, 3, 5, 37, 16, walks=True, seed=1)
    leaves = (u, delta, A, Bm, Cm, D)
    y, last, _ = ssm_mod._scan(u, delta, A, Bm, Cm, D, order)
    want, want_last = 0, []
    for k in range(order.shape[0]):
        idx = order[k].long()
        yk, hk = reference_scan(u[:, 0, :, idx], delta[:, k][..., idx], A[k], Bm[:, k, idx].transpose(-1, -2),
                                Cm[:, k, idx].transpose(-1, -2), D[k], return_last_state=True)
        want = want + torch.zeros_like(yk).index_copy(-1, idx, yk)
        want_last.append(hk)
    assert_rel_close(y[:, 0], want, rtol=1e-5)
    assert_rel_close(last, torch.stack(want_last, 1), rtol=1e-5)
    got = torch.autograd.grad((y * y).sum() + last.sum(), leaves)
    ref = torch.autograd.grad((want * want).sum() + sum(h.sum() for h in want_last), leaves)
    for a, b in zip(got, ref):
        assert_rel_close(a, b, rtol=1e-5)


@pytest.mark.parametrize('scan', ['cross', 'bidirectional', 'raster'])
def test_backends_agree_on_the_mixer(monkeypatch, scan):
    """The compiled kernel's walks over one map (cpp) against the direction copies (torch): values and
    the grads of the input and of every parameter."""
    torch.manual_seed(0)
    m = SelectiveSSM2d(24, scan=scan)
    x = torch.randn(2, 24, 7, 9, requires_grad=True)
    results = {}
    for name in ('cpp', 'torch'):
        monkeypatch.setenv('ABLATE_SCAN_BACKEND', name)
        out = m(x)
        results[name] = (out, *torch.autograd.grad((out * out).sum(), [x, *m.parameters()]))
    for got, want in zip(results['cpp'], results['torch']):
        assert_rel_close(got, want.double(), rtol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(A=-torch.rand(4, 16, dtype=torch.complex64)), 'real'),
    (dict(B=torch.randn(4, 16)), 'B.shape'),
    (dict(C=torch.randn(2, 3, 16, 7)), 'groups'),
])
def test_bad_input_is_rejected(kwargs, match):
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs().items()}
    inputs.update(kwargs)
    with pytest.raises(ValueError, match=match):
        selective_scan(**inputs)


def test_backend_dispatch(monkeypatch):
    monkeypatch.delenv('ABLATE_SCAN_BACKEND', raising=False)
    assert scan_backend('cpu') == scan_backend() == 'cpp'  # auto: the compiled kernel builds here
    monkeypatch.setattr(ssm_mod, '_cuda_kernel', lambda: None)
    assert scan_backend('cuda') == 'torch'  # mamba_ssm not importable
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'cuda')
    with pytest.raises(RuntimeError, match='ABLATE_SCAN_BACKEND=cuda but mamba_ssm is not importable'):
        scan_backend('cuda')
    monkeypatch.setattr(ssm_mod, '_cuda_kernel', lambda: object())
    assert scan_backend('cuda') == 'mamba_ssm'
    assert scan_backend('cpu') == 'cpp'
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'torch')
    assert scan_backend('cuda') == scan_backend('cpu') == 'torch'
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'cpp')
    with pytest.raises(RuntimeError, match='ABLATE_SCAN_BACKEND=cpp runs on CPU tensors only'):
        scan_backend('cuda')


def test_bad_backend_name_is_one_clear_error(monkeypatch):
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'fast')
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs().items()}
    with pytest.raises(ValueError, match=r"^ABLATE_SCAN_BACKEND='fast' is not a scan backend; choose from: auto, "
                                         r"cpp, torch, cuda$"):
        selective_scan(**inputs)


@pytest.fixture
def no_compiler(monkeypatch):
    def fail():
        raise OSError('g++: not found')

    monkeypatch.setattr(ssm_mod, '_build_extension', fail)
    ssm_mod._compiled.cache_clear()
    yield
    monkeypatch.undo()
    ssm_mod._compiled.cache_clear()  # the next call loads the cached build again (no recompile)


def test_build_failure_falls_back_with_one_warning(no_compiler, monkeypatch, caplog):
    monkeypatch.delenv('ABLATE_SCAN_BACKEND', raising=False)
    inputs = make_inputs(length=9)
    with caplog.at_level(logging.WARNING, logger='ablate.models.ssm'):
        assert scan_backend() == 'torch'
        check_against_reference(inputs)  # the torch scan runs
        scan_backend()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'OSError: g++: not found' in warnings[0] and 'chunked torch scan' in warnings[0]
    monkeypatch.setenv('ABLATE_SCAN_BACKEND', 'cpp')
    with pytest.raises(RuntimeError, match='ABLATE_SCAN_BACKEND=cpp but the compiled selective scan cannot be '
                                           'built: OSError: g\\+\\+: not found'):
        scan_backend()


def test_record_scans_counts_each_call():
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(batch=2, dim=4, length=7).items()}
    with record_scans() as outer:
        selective_scan(**inputs)
        with record_scans() as inner:
            selective_scan(**{**inputs, 'z': None})
    assert len(outer) == 2 and len(inner) == 1
    # 9*B*L*D*N + B*D*L (D skip) + B*D*L (z gate)
    assert outer[0].macs == 9 * 2 * 7 * 4 * 16 + 2 * 2 * 4 * 7
    assert inner[0].macs == 9 * 2 * 7 * 4 * 16 + 2 * 4 * 7


def test_record_scans_without_computing():
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(batch=2, dim=4, length=7).items()}
    inputs['u'] = inputs['u'].bfloat16()
    with record_scans(compute=False) as calls:
        out, last = selective_scan(**inputs, return_last_state=True)
    assert len(calls) == 1 and calls[0].macs == 9 * 2 * 7 * 4 * 16 + 2 * 2 * 4 * 7
    assert out.shape == (2, 4, 7) and out.dtype == torch.bfloat16 and not out.any()
    assert last.shape == (2, 4, 16) and last.dtype == torch.float32
    assert selective_scan(**inputs).any()  # computed again outside the block


# --------------------------------------------------------------------------- SelectiveSSM2d
def test_mixer_init_follows_mamba():
    torch.manual_seed(0)
    m = SelectiveSSM2d(40, scan='cross')
    K, C, N, R = 4, 40, 16, math.ceil(40 / 16)
    assert m.dt_rank == R
    assert m.x_proj_weight.shape == (K, R + 2 * N, C)
    assert m.dt_proj_weight.shape == (K, C, R)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, N + 1.0)).expand(K * C, N))
    torch.testing.assert_close(m.D, torch.ones(K * C))
    dt = F.softplus(m.dt_proj_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert m.dt_proj_weight.abs().max() <= R ** -0.5
    assert m.x_proj_weight.abs().max() <= C ** -0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


def direct_mixer(m: SelectiveSSM2d, seq: torch.Tensor, k: int) -> torch.Tensor:
    """Direction k of the mixer on a (B, C, L) sequence, through the reference scan."""
    C, N, R = m.dim, m.d_state, m.dt_rank
    x_dbl = torch.einsum('bcl,mc->bml', seq, m.x_proj_weight[k])
    dt, Bs, Cs = x_dbl.split((R, N, N), dim=1)
    delta = torch.einsum('brl,cr->bcl', dt, m.dt_proj_weight[k])
    sl = slice(k * C, (k + 1) * C)
    return reference_scan(seq, delta, -torch.exp(m.A_log[sl]), Bs, Cs, m.D[sl], delta_bias=m.dt_proj_bias[sl],
                          delta_softplus=True)


def test_mixer_directions_are_wired_as_documented():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 5)
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    with torch.no_grad():
        m = SelectiveSSM2d(8, d_state=4, scan='raster')
        torch.testing.assert_close(m(x).double(), direct_mixer(m, rows, 0).unflatten(-1, (3, 5)), rtol=1e-5,
                                   atol=1e-5)
        m = SelectiveSSM2d(8, d_state=4, scan='bidirectional')
        want = (direct_mixer(m, rows, 0) + direct_mixer(m, rows.flip(-1), 1).flip(-1)) / 2
        torch.testing.assert_close(m(x).double(), want.unflatten(-1, (3, 5)), rtol=1e-5, atol=1e-5)
        m = SelectiveSSM2d(8, d_state=4, scan='cross')
        want = (direct_mixer(m, rows, 0) + direct_mixer(m, rows.flip(-1), 2).flip(-1)).unflatten(-1, (3, 5))
        want_cols = direct_mixer(m, cols, 1) + direct_mixer(m, cols.flip(-1), 3).flip(-1)
        want = want + want_cols.unflatten(-1, (5, 3)).transpose(-1, -2)
        torch.testing.assert_close(m(x).double(), want, rtol=1e-5, atol=1e-5)


def test_raster_scan_is_causal_and_cross_scan_is_not():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 4)
    x2 = x.clone()
    x2[..., 2, 1] += 1.0  # token 9 in row-major order
    for scan, causal in (('raster', True), ('bidirectional', False), ('cross', False)):
        m = SelectiveSSM2d(8, scan=scan)
        with torch.no_grad():
            diff = (m(x2) - m(x)).abs().sum(1).flatten()  # (L,) change per token
        assert diff[9] > 0 and diff[10:].max() > 0
        if causal:
            assert diff[:9].max() == 0
        else:
            assert diff[:9].max() > 0


def test_cross_scan_is_transpose_equivariant_with_swapped_directions():
    torch.manual_seed(0)
    m = SelectiveSSM2d(8, scan='cross')
    swapped = SelectiveSSM2d(8, scan='cross')
    perm = [1, 0, 3, 2]  # row-major <-> column-major
    with torch.no_grad():
        for name in ('x_proj_weight', 'dt_proj_weight'):
            getattr(swapped, name).copy_(getattr(m, name)[perm])
        for name in ('dt_proj_bias', 'A_log', 'D'):
            getattr(swapped, name).copy_(getattr(m, name).unflatten(0, (4, -1))[perm].flatten(0, 1))
        x = torch.randn(2, 8, 3, 5)
        torch.testing.assert_close(swapped(x.transpose(2, 3)), m(x).transpose(2, 3), rtol=1e-5, atol=1e-5)


def test_mixer_rejects_bad_config():
    with pytest.raises(ValueError, match=r"model.scan='zigzag' is not a scan order; choose from: cross, "
                                         r"bidirectional, raster"):
        SelectiveSSM2d(8, scan='zigzag')
    with pytest.raises(ValueError, match='model.d_state=0'):
        SelectiveSSM2d(8, d_state=0)


# --- building the kernel: a killed build must not lock it forever -----------------------------

@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """torch's build, stood in for by torch < 2.14's rule: a `lock` file in the build folder makes
    it wait forever (here: fail). Returns the names of the builds it ran."""
    from torch.utils import cpp_extension

    def build_directory(name, verbose):
        (tmp_path / name).mkdir(exist_ok=True)
        return str(tmp_path / name)

    built = []

    def load(name, build_directory, **kwargs):
        assert not (Path(build_directory) / 'lock').exists(), 'torch < 2.14 would wait on this lock forever'
        built.append(name)

    monkeypatch.setattr(cpp_extension, '_get_build_directory', build_directory)
    monkeypatch.setattr(cpp_extension, 'load', load)
    return built


def test_a_stale_build_lock_is_removed_and_the_kernel_rebuilt(tmp_path, fake_build, caplog):
    ssm_mod._build_extension()  # makes the build folder
    (built_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (built_dir / 'lock').touch()  # what a build killed mid-way leaves: its lock file, and no library
    with caplog.at_level(logging.INFO, logger='ablate.models.ssm'):
        ssm_mod._build_extension()
    assert len(fake_build) == 2 and not (built_dir / 'lock').exists()
    assert [r.getMessage() for r in caplog.records] == [
        f'removed a stale build lock {built_dir / "lock"} left by a killed build; rebuilding the selective scan']


def test_a_build_in_progress_elsewhere_is_waited_for_not_broken(tmp_path, fake_build, caplog):
    import fcntl
    import multiprocessing
    import time

    ssm_mod._build_extension()
    (built_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (built_dir / 'lock').touch()
    (built_dir / f'{built_dir.name}.so').touch()  # a library from an earlier build: nothing to say about it
    guard = open(built_dir.with_name(built_dir.name + '.ablate-lock'), 'w')
    fcntl.flock(guard, fcntl.LOCK_EX)  # another process's build, in progress (an open file description of its own)
    release = multiprocessing.get_context('fork').Process(target=lambda: (time.sleep(0.5), fcntl.flock(guard, fcntl.LOCK_UN)))
    with caplog.at_level(logging.INFO, logger='ablate.models.ssm'):
        release.start()
        try:
            ssm_mod._build_extension()
        finally:
            release.join(timeout=30)
            guard.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any('another process is building the selective scan' in m for m in messages)
    assert not any('stale' in m for m in messages)
    assert len(fake_build) == 2
