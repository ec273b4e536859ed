"""Batch-norm folding for the ERF engine: the same function on a copy, only where it is safe."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from rflens.fold import fold_batchnorm


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def test_resnet_folds_every_pair_and_computes_the_same_function():
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18()).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, count, note = fold_batchnorm(model)
    assert count == 20 and "20 convolutions" in note  # stem, 8 blocks x 2, 3 downsamples
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert set(dict(folded.named_modules())) == set(dict(model.named_modules()))  # names kept for hooks


def test_the_probed_conv_and_unsafe_pairs_are_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.bn2 = nn.BatchNorm2d(4)
            self.conv3 = nn.Conv2d(4, 4, 1)
            self.bn3 = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x):
            y = self.conv2(self.bn(self.conv(x)))
            z = self.bn2(y) + y  # conv2's output has two users
            return self.bn3(self.conv3(z))  # batch statistics even in eval mode

    model = _randomise_bn(Shared())
    assert fold_batchnorm(model, keep="conv")[1] == 0
    folded, count, _ = fold_batchnorm(model)
    assert count == 1 and isinstance(folded.bn, nn.Identity) and isinstance(folded.bn2, nn.BatchNorm2d)


def test_models_fx_cannot_trace_are_left_alone():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return self.bn(self.conv(x))

    model = Dynamic().eval()
    same, count, note = fold_batchnorm(model)
    assert same is model and count == 0 and "torch.fx cannot trace" in note


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_weights_take_the_run_dtype(dtype):
    model = _randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)))
    folded, count, _ = fold_batchnorm(model, dtype=dtype)
    assert count == 1 and folded[0].weight.dtype == dtype and folded[0].bias.dtype == dtype


def test_a_model_in_train_mode_is_traced_in_eval_mode():
    class EvalBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            out = self.bn(y)
            if not self.training:  # in eval mode the raw conv output is used again
                out = out + y
            return out

    model = _randomise_bn(EvalBranch()).train()
    folded, count, _ = fold_batchnorm(model)
    assert count == 0 and folded is model and model.training
    x = torch.randn(1, 3, 8, 8)
    model.eval()
    torch.testing.assert_close(folded(x), model(x))
