"""The architectures: torchvision DenseNet-121 layout, A³ and PWAP as specified, segmenter shapes."""

from __future__ import annotations

import torch
import torchvision

from cxr_models import anatomy_xnet, contract, segmenter


def test_backbone_is_torchvision_densenet121_and_loads_its_state_dict():
    torch.manual_seed(1)
    reference = torchvision.models.densenet121(weights=None)
    model = anatomy_xnet.AnatomyXNet(anatomy_xnet.FULL)
    ours = model.features.state_dict()
    theirs = reference.features.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert anatomy_xnet.feature_channels(anatomy_xnet.FULL) == 1024
    # a full torchvision checkpoint (with classifier.* keys) and the old "norm.1" key spelling
    full = reference.state_dict()
    old_style = {("module." + k).replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in full.items()}
    for state in (full, old_style):
        model = anatomy_xnet.AnatomyXNet(anatomy_xnet.FULL)
        assert model.load_backbone(state) == []
        for key, value in theirs.items():
            assert torch.equal(model.features.state_dict()[key], value), key


def test_anatomy_attention_is_bn_of_gated_mix():
    torch.manual_seed(0)
    a3 = anatomy_xnet.AnatomyAttention(8, 2).eval()
    with torch.no_grad():
        a3.norm.running_mean.uniform_(-1, 1)
        a3.norm.running_var.uniform_(0.5, 2)
    f = torch.rand(2, 8, 4, 4)
    m = torch.rand(2, 1, 4, 4)
    fm = f * m
    desc = torch.cat([f.mean((2, 3)), f.amax((2, 3)), fm.mean((2, 3)), fm.amax((2, 3))], 1)
    g = torch.sigmoid(a3.gate(desc))[:, :, None, None]
    expected = a3.norm(g * fm + (1 - g) * f)
    assert torch.allclose(a3(f, m), expected)
    # a mask of ones leaves BN(F)
    assert torch.allclose(a3(f, torch.ones_like(m)), a3.norm(f), atol=1e-6)


def test_pwap_logit_is_the_probability_weighted_average_of_the_logit_map():
    torch.manual_seed(0)
    pwap = anatomy_xnet.PWAP(16, 14)
    f = torch.randn(3, 16, 5, 5)
    logits, maps = pwap(f)
    p = torch.sigmoid(maps)
    weights = p / p.sum(dim=(2, 3), keepdim=True)
    # the 1x1 conv is affine and the weights sum to 1: w·(Σ p f) + b = Σ p (w·f + b)
    assert torch.allclose(logits, (weights * maps).sum(dim=(2, 3)), atol=1e-5)
    assert maps.shape == (3, 14, 5, 5)


def test_classifier_outputs_and_masks_steer_it():
    torch.manual_seed(0)
    cfg = anatomy_xnet.TINY
    model = anatomy_xnet.AnatomyXNet(cfg).eval()
    image = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    ones = torch.ones(2, 2, cfg.mask_size, cfg.mask_size)
    with torch.no_grad():
        probs, maps = model(image, ones)
        probs_zero, _ = model(image, torch.zeros_like(ones))
    assert probs.shape == (2, 14) and maps.shape == (2, 14, cfg.map_size, cfg.map_size)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert not torch.allclose(probs, probs_zero)


def test_segmenter_shapes_and_range():
    model = segmenter.UNet(segmenter.TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, len(contract.SEGMENTER_CHANNELS), 64, 64)
    assert ((out >= 0) & (out <= 1)).all()


def test_pwap_stays_finite_when_every_cell_is_very_negative():
    pwap = anatomy_xnet.PWAP(4, 14)
    with torch.no_grad():
        pwap.classifier.bias.fill_(-200.0)
    logits, _ = pwap(torch.rand(1, 4, 3, 3))
    assert torch.isfinite(logits).all()
