"""The skeleton: MambaOut exactly with ssm=False, Eq. 11 with ssm=True, timm-style API."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from ablate.models import VARIANTS, MambaOut, SelectiveSSM2d, build_model, seq_len, tau  # registers ablate_mambaout_*

PAPER_VARIANTS = ['femto', 'kobe', 'tiny', 'small', 'base']


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the right shapes (cheaper than building and initialising a real model)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, v in model.state_dict().items():
        w = torch.randn(v.shape, generator=g)
        is_norm_weight = v.dim() == 1 and 'norm' in name and name.endswith('weight')
        out[name] = 1 + 0.1 * w if is_norm_weight else 0.02 * w
    return out


@pytest.mark.parametrize('name', PAPER_VARIANTS)
def test_ssm_off_is_timm_mambaout(name):
    with torch.device('meta'):  # shapes only; the weights come from random_state_dict
        ref = timm.create_model(f'mambaout_{name}', pretrained=False)
        ours = build_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    state = random_state_dict(ref)
    ref.load_state_dict(state, strict=True, assign=True)
    ours.load_state_dict(state, strict=True, assign=True)  # identical keys: the mapping is the identity
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_variants_table():
    assert list(VARIANTS) == ['pico', 'nano', 'femto', 'kobe', 'tiny', 'small', 'base']
    assert VARIANTS['pico'] == dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), drop_path=0.0)
    assert VARIANTS['nano'] == dict(depths=(2, 2, 4, 2), dims=(16, 32, 64, 96), drop_path=0.0)
    assert VARIANTS['small'] == dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576), drop_path=0.4)
    m = build_model('pico')
    assert m.dims == (8, 16, 24, 32) and m.num_features == 32
    assert [len(s.blocks) for s in m.stages] == [1, 1, 2, 1]
    assert tau(m) == 144 and seq_len(208) == 169 > tau(m)  # pico's "long" sequence on CPU


def test_drop_path_rises_linearly_over_all_blocks():
    m = build_model('tiny')
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for s in m.stages for b in s.blocks]
    assert len(rates) == 18
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, 18), rtol=0, atol=1e-7)
    m = build_model('tiny', drop_path_rate=0.0)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for s in m.stages for b in s.blocks)


def test_init_is_trunc_normal_and_zero_bias():
    torch.manual_seed(0)
    m = build_model('nano', ssm=True)
    w = torch.cat([mod.weight.flatten() for mod in m.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all((mod.bias == 0).all() for mod in m.modules()
               if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and mod.bias is not None)
    # the SSM keeps Mamba's init (not overwritten by the skeleton's)
    mixer = m.stages[0].blocks[0].ssm
    assert mixer.dt_proj_weight.abs().max() > 0.3  # U(+-dt_rank^-0.5), dt_rank 1 for C=16
    torch.testing.assert_close(mixer.D, torch.ones_like(mixer.D))


def test_fan_in_init_scales_each_weight_by_its_fan_in():
    torch.manual_seed(0)
    m = build_model('nano', ssm=True, init='fan_in')
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and mod.weight.numel() >= 2000:
            fan_in = mod.weight[0].numel()  # e.g. 49 for the 7x7 depthwise conv, C for a 1x1 conv
            # timm's trunc_normal_ cuts at +-2 absolute: > 10 sd here, so the sd is the normal's
            assert abs(mod.weight.std().item() * fan_in ** 0.5 - 1) < 0.1, name
    mixer = m.stages[0].blocks[0].ssm
    torch.testing.assert_close(mixer.D, torch.ones_like(mixer.D))  # the SSM keeps Mamba's init here too
    # the switch changes the init only: the same parameters and shapes as timm's init
    timm_init = build_model('nano', ssm=True)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in timm_init.state_dict().items()}


@pytest.mark.parametrize('ssm', [False, True])
def test_device_and_dtype_factory_kwargs_as_timm(ssm):
    # timm's tests build every registered model with device=/dtype= (timm's own mambaout_femto takes them)
    on_meta = timm.create_model('ablate_mambaout_femto', ssm=ssm, device='meta')
    assert {p.device.type for p in on_meta.parameters()} == {'meta'}
    reference = timm.create_model('ablate_mambaout_femto', ssm=ssm)
    assert {k: v.shape for k, v in on_meta.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    half = timm.create_model('ablate_mambaout_pico', ssm=ssm, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    out = half(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1000) and out.isfinite().all()


def test_ssm_arm_adds_only_the_mixers():
    off, on = build_model('nano'), build_model('nano', ssm=True)
    names_off = set(off.state_dict())
    names_on = set(on.state_dict())
    assert names_off < names_on
    extra = names_on - names_off
    assert extra and all('.ssm.' in n for n in extra)
    for n in names_off:
        assert off.state_dict()[n].shape == on.state_dict()[n].shape
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert set(missing) == extra and not unexpected
    n_blocks = sum(VARIANTS['nano']['depths'])
    assert sum(isinstance(mod, SelectiveSSM2d) for mod in on.modules()) == n_blocks


def test_ssm_block_is_eq11():
    """y = fc2(GELU(g) * [i, SSM(SiLU(DWConv(c)))]) + x, nothing else changed."""
    torch.manual_seed(0)
    m = build_model('pico', ssm=True, scan='bidirectional').eval()
    block = m.stages[1].blocks[0]
    x = torch.randn(2, 6, 5, 16)
    with torch.no_grad():
        g, i, c = torch.split(block.fc1(block.norm(x)), block.split_indices, dim=-1)
        c = block.ssm(F.silu(block.conv(c.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)
        want = block.fc2(F.gelu(g) * torch.cat((i, c), -1)) + x
        torch.testing.assert_close(block(x), want)
    assert block.split_indices == (int(8 / 3 * 16), int(8 / 3 * 16) - 16, 16)


@pytest.mark.parametrize('scan,directions', [('cross', 4), ('bidirectional', 2), ('raster', 1)])
def test_scan_order_sets_the_direction_parameters(scan, directions):
    off = sum(p.numel() for p in build_model('pico').parameters())
    on = sum(p.numel() for p in build_model('pico', ssm=True, scan=scan).parameters())
    per_direction = 0
    for d, depth in zip((8, 16, 24, 32), (1, 1, 2, 1)):
        r, n = math.ceil(d / 16), 16
        per_direction += depth * (d * (r + 2 * n) + r * d + d + d * n + d)  # x_proj, dt_proj w+b, A_log, D
    assert on - off == directions * per_direction


def test_ssm_model_trains_end_to_end():
    torch.manual_seed(0)
    m = build_model('pico', ssm=True, num_classes=5)
    x, y = torch.randn(2, 3, 64, 96), torch.tensor([1, 3])
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.stages[0].blocks[0].ssm.A_log.grad.abs().sum() > 0


def test_no_weight_decay_lists_every_a_log_and_d():
    m = build_model('pico', ssm=True)
    nwd = m.no_weight_decay()
    n_blocks = sum(VARIANTS['pico']['depths'])
    assert len(nwd) == 2 * n_blocks
    assert all(n.endswith('.ssm.A_log') or n.endswith('.ssm.D') for n in nwd)
    assert build_model('pico').no_weight_decay() == set()
    opt = create_optimizer_v2(m, 'adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    params = dict(m.named_parameters())
    assert not any(id(params[n]) in decayed for n in nwd)
    assert id(params['stages.0.blocks.0.ssm.x_proj_weight']) in decayed


def test_timm_registry():
    assert {f'ablate_mambaout_{v}' for v in VARIANTS} <= set(timm.list_models('ablate_mambaout_*'))
    m = timm.create_model('ablate_mambaout_pico', ssm=True, scan='raster', num_classes=7)
    assert isinstance(m, MambaOut) and m.ssm and m.scan == 'raster' and m.num_classes == 7
    assert m.stages[0].blocks[0].ssm.scan == 'raster'
    with pytest.raises(ValueError, match='no hosted weights'):
        timm.create_model('ablate_mambaout_pico', pretrained=True)


@pytest.mark.parametrize('ssm', [False, True])
def test_fx_trace_and_torchscript_as_in_timms_model_tests(ssm):
    # timm's tests/test_models.py traces every model to its last graph node with torch.fx (eval and
    # train graphs), checks the trace against eager and backward through it, then scripts the trace
    from timm.layers import create_feature_extractor, get_graph_node_names

    model = timm.create_model('ablate_mambaout_pico', ssm=ssm)
    x = torch.randn(2, 3, 64, 64)
    _, eval_nodes = get_graph_node_names(model)
    last = eval_nodes[-1]
    traced = create_feature_extractor(model, return_nodes=[last])  # traces the train and the eval graph
    model.eval(), traced.eval()
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(traced(x)[last], want)
    traced.train()
    traced(x)[last].mean().backward()
    assert all(p.grad is not None for p in traced.parameters())
    if ssm:  # the mixer is a leaf of the trace (its scan is a Python custom op): TorchScript cannot compile it
        assert any(type(m).__name__ == 'SelectiveSSM2d' for m in traced.modules())
        return
    scripted = torch.jit.script(traced.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)[last], want)


def test_forward_intermediates_and_features():
    torch.manual_seed(0)
    m = build_model('pico', ssm=True).eval()
    x = torch.randn(1, 3, 64, 96)
    assert m.feature_info == [dict(num_chs=c, reduction=r, module=f'stages.{i}')
                              for i, (c, r) in enumerate(zip(m.dims, (4, 8, 16, 32)))]
    with torch.no_grad():
        final, feats = m.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 24, 4, 6), (1, 32, 2, 3)]
        torch.testing.assert_close(final, m.forward_features(x))
        torch.testing.assert_close(feats[-1], final.permute(0, 3, 1, 2))
        only = m.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        torch.testing.assert_close(only[0], feats[1])
        torch.testing.assert_close(only[1], feats[3])
        last2 = m.forward_intermediates(x, indices=2, output_fmt='NHWC', intermediates_only=True)
        torch.testing.assert_close(last2[0], feats[2].permute(0, 2, 3, 1))
        torch.manual_seed(0)  # same init as m
        fm = timm.create_model('ablate_mambaout_pico', ssm=True, features_only=True).eval()
        for got, want in zip(fm(x), feats):  # NHWC like timm's MambaOut feature wrapper
            torch.testing.assert_close(got, want.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        m.forward_intermediates(x, output_fmt='NLC')


def test_head_and_backbone_mode():
    torch.manual_seed(0)
    m = build_model('pico').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 2, 2, 32)  # NHWC
        assert m.forward_head(feats).shape == (2, 1000)
        pre = m.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 128)
        torch.testing.assert_close(m.head.fc(pre), m(x))
        backbone = build_model('pico', num_classes=0).eval()
        backbone.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith('head.fc.')})
        torch.testing.assert_close(backbone(x), pre)
    assert isinstance(backbone.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize('kwargs,message', [
    (dict(name='tinyy'),
     "model.name='tinyy' is not a variant; choose from: pico, nano, femto, kobe, tiny, small, base"),
    (dict(name='tiny', scan='spiral'), "model.scan='spiral' is not allowed: one of: cross, bidirectional, raster"),
    (dict(name='tiny', d_state=0), 'model.d_state=0 is not allowed: a number >= 1'),
    (dict(name='tiny', dt_rank=-2), 'model.dt_rank=-2'),
    (dict(name='tiny', num_classes=-1), 'model.num_classes=-1'),
    (dict(name='tiny', drop_path_rate=1.5), 'model.drop_path_rate=1.5'),
    (dict(name='tiny', init='xavier'), "model.init='xavier' is not allowed: one of: timm, fan_in"),
    (dict(name='pico', ssm=True, causal=True), 'model.causal=true with model.scan=cross is not allowed: a causal SSM '
                                               'arm needs model.scan=raster'),
    (dict(name='pico', ssm=True, match_macs=True), 'model.match_macs=true with model.ssm=true is not allowed'),
])
def test_bad_config_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        build_model(**kwargs)
    assert message in str(err.value) and '\n' not in str(err.value)


@pytest.mark.parametrize('ssm', [False, True])
@pytest.mark.parametrize('causal', [True, False])
def test_causal_token_mixing_sees_only_earlier_positions_in_raster_order(ssm, causal):
    """Perturb the token at raster index 41 of a 9 x 9 map entering stage 0 (no downsample there):
    causal blocks leave every earlier output unchanged; fully-visible ones do not. float64, fan_in init:
    far SSM contributions stay above rounding."""
    model = build_model('pico', ssm=ssm, causal=causal, scan='raster' if causal else 'cross', init='fan_in')
    stage = model.stages[0].double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 9, 8, generator=g, dtype=torch.float64)
    later = x.clone()
    later[:, 4, 5] += torch.randn(8, generator=g, dtype=torch.float64)  # LN would erase a constant shift
    with torch.no_grad():
        change = (stage(x) - stage(later)).abs().amax(-1).flatten()
    assert (change[:41] > 0).any().item() is not causal
    # after it: the conv's reach (25 of the 40 later positions in its 7 x 7 window), the SSM arm's raster scan all 40
    assert int((change[41:] > 0).sum()) == (40 if ssm and causal else 25 + 15 * ssm)


@pytest.mark.parametrize('ssm', [False, True])
def test_the_causal_switch_changes_no_parameter_and_no_mac(ssm):
    from ablate.models import count_cost

    arms = [build_model('femto', ssm=ssm, scan='raster', causal=causal) for causal in (False, True)]
    costs = [count_cost(model, (224, 224)) for model in arms]
    assert costs[0] == costs[1]
    assert list(arms[0].state_dict()) == list(arms[1].state_dict())  # checkpoints of either arm load in the other


@pytest.mark.parametrize('name, size, ratio', [
    ('pico', (224, 224), 19.881), ('femto', (224, 224), 4.905), ('tiny', (224, 224), 3.869),
    ('tiny', (512, 512), 3.869),  # a dense size (ADE20K's crop): matched at its own MACs
])
def test_match_macs_widens_the_ssm_off_arm_to_the_ssm_arms_macs_within_one_percent(name, size, ratio):
    from ablate.models import count_cost

    ssm = count_cost(build_model(name, ssm=True, num_classes=0), size)
    model = build_model(name, match_macs=True, image_size=size, num_classes=0)
    matched = count_cost(model, size)
    assert abs(matched.macs / ssm.macs - 1) <= 0.01 and matched.macs_ssm == 0
    assert model.expansion_ratio == pytest.approx(ratio, abs=1e-3)
    plain = build_model(name, num_classes=0)
    assert (model.dims, [len(s.blocks) for s in model.stages]) == (plain.dims, [len(s.blocks) for s in plain.stages])
    widened = {k for k, v in model.state_dict().items() if v.shape != plain.state_dict()[k].shape}
    assert widened and all(k.endswith(('fc1.weight', 'fc1.bias', 'fc2.weight')) for k in widened)
