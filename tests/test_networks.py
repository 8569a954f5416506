"""The literature V-Net and classifier-feature access."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from ssmis.networks import ClassifierFeatures, VNet, find_classifier, unwrap_module


def test_vnet_parameter_count():
    n = sum(p.numel() for p in VNet(spatial_dims=3, in_channels=1, out_channels=2, features=16).parameters())
    assert abs(n - 9.4e6) / 9.4e6 < 0.01, n  # the literature quotes about 9.4 M


@pytest.mark.parametrize("dims", [2, 3])
def test_vnet_shapes(dims):
    net = VNet(spatial_dims=dims, out_channels=3, features=4)
    x = torch.randn(2, 1, *([32] * dims))
    assert net(x).shape == (2, 3, *([32] * dims))
    with pytest.raises(ValueError, match=r"multiple of 16, got torch.Size\(\[32, 40"):
        net(torch.randn(1, 1, 32, 40, *([16] * (dims - 2))))
    scripted = torch.jit.script(net.eval())  # what ckpt_export does
    assert torch.allclose(scripted(x), net(x), atol=1e-5)


def _nets():
    return [
        ("vnet3d", VNet(3, 1, 2, features=4), (1, 1, 16, 16, 16)),
        ("vnet2d", VNet(2, 1, 4, features=4), (2, 1, 32, 32)),
        ("basicunet3d", BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)), (1, 1, 32, 32, 32)),
        ("basicunet2d", BasicUNet(2, 1, 4, features=(4, 4, 8, 8, 16, 4)), (2, 1, 32, 32)),
    ]


@pytest.mark.parametrize("name, net, shape", _nets(), ids=[n[0] for n in _nets()])
def test_classifier_features_reproduce_logits(name, net, shape):
    net.eval()
    tap = ClassifierFeatures(net)
    logits = net(torch.randn(*shape))
    a, w, b = tap.features, tap.weight, tap.bias
    assert a.shape[0] == shape[0] and a.shape[2:] == logits.shape[2:]
    assert w.shape == (logits.shape[1], a.shape[1]) and b.shape == (logits.shape[1],)
    again = torch.einsum("ca,ba...->bc...", w, a) + b.reshape(1, -1, *[1] * (a.ndim - 2))
    torch.testing.assert_close(again, logits, rtol=1e-4, atol=1e-5)
    # gradients flow to the features (TSA back-propagates through them)
    assert a.requires_grad
    tap.remove()
    net(torch.randn(*shape))
    assert tap.features is None


def test_find_classifier_rejects_networks_without_final_1x1():
    with pytest.raises(ValueError, match="no 1x1 convolution"):
        find_classifier(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)))
    with pytest.raises(ValueError, match="not the last layer"):
        find_classifier(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Conv3d(2, 2, 3)))


def test_classifier_features_through_data_parallel_wrapper():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # DataParallel wants its module on cuda:0 if there is one
    net = torch.nn.DataParallel(VNet(3, 1, 2, features=4).to(device))  # on the CPU it forwards to .module
    tap = ClassifierFeatures(net)
    net(torch.randn(2, 1, 16, 16, 16, device=device))
    assert tap.features.shape == (2, 4, 16, 16, 16)


def test_unwrap_module_only_unwraps_data_parallel_wrappers():
    inner = VNet(3, 1, 2, features=4)
    assert unwrap_module(torch.nn.DataParallel(torch.nn.DataParallel(inner))) is inner
    assert unwrap_module(inner) is inner

    class HasModuleAttribute(torch.nn.Module):  # a model whose submodule happens to be called "module"
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Conv3d(1, 2, 1)

    own = HasModuleAttribute()
    assert unwrap_module(own) is own
    assert set(unwrap_module(torch.nn.DataParallel(own)).state_dict()) == {"module.weight", "module.bias"}
    optimiser = torch.optim.SGD(inner.parameters(), lr=0.1)
    assert unwrap_module(optimiser) is optimiser
