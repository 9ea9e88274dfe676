"""The DeiT family through the front door: timm's DeiT exactly when fully visible, a causal switch that
changes no parameter and no MAC, causality by perturbation, and the MAC count with attention."""
import pytest
import timm
import torch

from ablate.config import compose, validate
from ablate.models import count_cost, family_of
from ablate.models.vit import readout_causal_mask

# timm name, params, MACs at 224: fvcore's count plus 2 * L^2 * D per block (L = 197), docs/study.md §7
DEIT = {'deit_tiny': ('deit_tiny_patch16_224', 5_717_416, 1_079_579_328 + 12 * 2 * 197 ** 2 * 192),
        'deit_small': ('deit_small_patch16_224', 22_050_664, 4_250_674_560 + 12 * 2 * 197 ** 2 * 384)}


@pytest.mark.parametrize('name', DEIT)
def test_fully_visible_is_timm_deit_and_the_causal_switch_changes_no_parameter_or_mac(name):
    timm_name, params, macs = DEIT[name]
    build = family_of(name).build
    ref = timm.create_model(timm_name).eval()
    arms = {causal: build(name=name, causal=causal).eval() for causal in (False, True)}
    for model in arms.values():
        model.load_state_dict(ref.state_dict(), strict=True)  # timm's keys load as is
        cost = count_cost(model, (224, 224))
        assert (cost.params, cost.macs, cost.macs_ssm) == (params, macs, 0)
    assert round(macs / 1e9, 1) == {'deit_tiny': 1.3, 'deit_small': 4.6}[name]  # the published MACs
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(arms[False](x), ref(x))
        assert not torch.allclose(arms[True](x), ref(x), atol=1e-3)


def test_fvcore_alone_misses_attention():
    """The trap the explicit count closes: fvcore without the SDPA handle gives 1.080 G for deit_tiny."""
    from fvcore.nn import FlopCountAnalysis

    model = timm.create_model('deit_tiny_patch16_224').eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224)).unsupported_ops_warnings(False)
    assert analysis.total() == 1_079_579_328


def test_the_readout_causal_mask():
    allowed = readout_causal_mask(3)  # class token, then patches 0, 1, 2
    assert allowed.tolist() == [[True, True, True, True],
                                [False, True, False, False],
                                [False, True, True, False],
                                [False, True, True, True]]


@pytest.mark.parametrize('causal', [True, False])
def test_a_patch_token_depends_on_later_patches_only_when_fully_visible(causal):
    model = family_of('deit_tiny').build(name='deit_tiny', causal=causal, image_size=(64, 64)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[:, :, 32:48, 16:32] += torch.randn(3, 16, 16)  # patch (2, 1): raster index 9, token 10
    with torch.no_grad():
        change = (model.forward_features(x) - model.forward_features(later)).abs().amax(-1)[0]
    assert (change[1:10] > 0).any().item() is not causal  # the patches before it
    assert (change[10:] > 0).all() and change[0] > 0  # itself, the patches after it, the class token


def test_the_family_is_one_config_file_and_validates_like_any_model():
    cfg = compose(['model=deit', 'model.name=deit_small', 'model.causal=true', 'task=shapes'])
    validate(cfg)
    assert dict(cfg.model) == {'name': 'deit_small', 'causal': True, 'drop_path_rate': None}
    family = family_of('deit_small')
    assert family.tau('deit_small') == 2304 and family.seq_len((224, 224)) == 196  # docs/study.md §2
    with pytest.raises(ValueError, match=r"model.name='pico' is not allowed: one of: deit_tiny, deit_small"):
        validate(compose(['model=deit', 'model.name=pico']))
    with pytest.raises(ValueError, match=r'task.image_size=\[30, 32\] is not allowed: \[H, W\], two integers >= 16, multiples of 16'):
        family.build(name='deit_tiny', image_size=(30, 32))


def test_a_dense_task_refuses_a_family_without_four_stages():
    from ablate.tasks.heads import build_backbone

    with pytest.raises(ValueError, match='model.name=deit_tiny is not allowed on a dense task'):
        build_backbone({'name': 'deit_tiny', 'causal': False, 'drop_path_rate': None}, (64, 64))
