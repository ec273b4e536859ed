"""Capture: op coverage, dim tracking, the global flag, clear errors, no FLOPs and no change to the model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import rflens
from rflens.capture import capture


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def rf_of(model, size, layer=None, **kw):
    result = rflens.receptive_field(model, size, **kw)
    return result.layer(layer) if layer is not None else max(result.layers, key=lambda x: x.node)


# -- window ops -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_conv_any_dim_with_groups_and_dilation(ndim):
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][ndim - 1]
    model = nn.Sequential(conv(4, 8, 3, stride=2, padding=1, groups=2), conv(8, 8, 3, dilation=2, padding=2, groups=8))
    layer = rf_of(model, 32 if ndim < 3 else 16)
    # 3x3 s2 p1 -> rf 3, stride 2, padding 1; then 3x3 dilation 2: rf 3 + 2*2*2 = 11, padding 1 + 2*2 = 5
    assert layer.rf == (11,) * ndim and layer.stride == (2,) * ndim and layer.padding == (5,) * ndim


def test_transposed_conv():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1))
    layer = rf_of(model, 32)
    assert layer.stride == (1, 1)
    assert layer.output_size == (32, 32)
    # transposed k4 s2 p1: unit u reads inputs ceil((u-2)/2)..floor((u+1)/2), i.e. 2 units of stride 2
    assert layer.rf == (5, 5)


def test_pooling_ceil_mode_sizes_match_torch():
    for ceil_mode in (False, True):
        model = nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode), nn.AvgPool2d(2, 2, ceil_mode=ceil_mode))
        x = torch.zeros(1, 1, 15, 15)
        result = rflens.receptive_field(model, (15, 15), in_channels=1)
        assert result.layer("0").output_size == tuple(model[0](x).shape[2:])
        assert result.layer("1").output_size == tuple(model(x).shape[2:])


def test_adaptive_pooling_local_and_global():
    result = rflens.receptive_field(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(3)), 7)
    assert result.layer("1").rf == (3, 3) and not result.layer("1").is_global
    se = rflens.receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d((1, 5))), 12)
    assert se.layer("1").is_global and se.layer("1").rf[0] is None and se.layer("1").rf[1] is not None


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_padding_modes(mode):
    model = nn.Sequential(Lambda(lambda x: F.pad(x, (2, 1, 0, 3), mode=mode)), nn.Conv2d(1, 1, 3))
    result = rflens.receptive_field(model, 9)
    layer = result.layer("1")
    assert layer.rf == (3, 3) and layer.padding == (0, 2) and layer.output_size == (10, 10)
    corner = result.support("1", (0, 0))
    if mode == "circular":  # wraps: the last columns feed the first unit
        assert corner[0, 8] and corner[0, 0]
    elif mode == "constant":  # rows 0..2 (no top padding), column 0 (two columns of zeros on the left)
        assert np.argwhere(corner).tolist() == [[0, 0], [1, 0], [2, 0]]
    else:
        assert not corner[:, 8].any()


def test_timm_tf_same_padding_is_asymmetric():
    timm = pytest.importorskip("timm")
    from timm.layers import create_conv2d

    conv = create_conv2d(1, 1, 3, stride=2, padding="same")  # TF "same": dynamic F.pad (0, 1) at 224
    layer = rf_of(conv, 224, "")
    assert layer.padding == (0, 0) and layer.rf == (3, 3)
    assert timm is not None


def test_upsampling_makes_the_stride_a_fraction():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Upsample(scale_factor=4, mode="nearest"))
    layer = rf_of(model, 16)
    assert layer.stride == (Fraction(1, 2),) * 2 and layer.rf == (3, 3) and layer.output_size == (32, 32)


def test_pixel_shuffle_and_unshuffle():
    up = rf_of(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.PixelShuffle(2)), 8)
    assert up.stride == (Fraction(1, 2),) * 2 and up.rf == (3, 3) and up.output_size == (16, 16)
    down = rf_of(nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, 1, 3, padding=1)), (8, 8), in_channels=1)
    assert down.stride == (2, 2) and down.rf == (6, 6) and down.padding == (2, 2)


def test_strided_slicing():
    layer = rf_of(nn.Sequential(nn.Conv2d(1, 1, 3), Lambda(lambda x: x[:, :, 1::2, :])), 12)
    assert layer.stride == (2, 1) and layer.padding == (-1, 0) and layer.output_size == (5, 10)


# -- merging paths and the global flag ----------------------------------------------------------------------
class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))


def test_squeeze_excitation_is_global_with_local_rf():
    result = rflens.receptive_field(nn.Sequential(SE(4)), 16)
    layer = result.layer("0")
    assert layer.is_global and layer.rf == (3, 3)
    assert not result.layer("0.conv").is_global


def test_concat_and_residual_union():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 5, padding=2)
            self.b = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1) + x

    layer = rf_of(Net(), 16, "")
    assert layer.rf == (5, 5) and layer.rf_min == (1, 1) and layer.padding == (2, 2)


def test_channels_last_linear_is_pointwise():
    """ConvNeXt's pattern: permute to NHWC, nn.Linear over channels, permute back."""
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), Lambda(lambda x: x.permute(0, 2, 3, 1)), nn.Linear(8, 8),
                          Lambda(lambda x: x.permute(0, 3, 1, 2)), nn.Conv2d(8, 8, 3, padding=1))
    layer = rf_of(model, 32)
    assert layer.rf == (12, 12) and layer.stride == (4, 4) and not layer.is_global


def test_attention_over_tokens_is_global():
    class ViTish(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = t + self.attn(t, t, t, need_weights=False)[0]
            return t.transpose(1, 2).reshape(x.shape[0], 8, x.shape[2] // 4, x.shape[3] // 4)

    result = rflens.receptive_field(ViTish(), 32)
    final = result.layer("")
    assert final.is_global and final.rf == (4, 4) and final.output_size == (8, 8)
    assert not result.layer("embed").is_global


def test_spatial_reduction_of_one_axis():
    layer = rf_of(nn.Sequential(nn.Conv2d(1, 1, 3), Lambda(lambda x: x.amax(2, keepdim=True))), 10)
    assert layer.is_global and layer.rf == (None, 3) and layer.output_size == (1, 8)


# -- exact support ------------------------------------------------------------------------------------------
def test_support_is_clipped_at_the_border_and_has_dilation_holes():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=2, dilation=2))
    result = rflens.receptive_field(model, 9)
    corner = result.support("0", (0, 0))
    assert np.argwhere(corner).tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]
    with pytest.raises(IndexError):
        result.support("0", (9, 0))


# -- the user's model is left alone; no FLOPs are spent ------------------------------------------------------
class DeviceLog(TorchDispatchMode):
    """Devices of every tensor any op produced: meta tensors hold no data, so no arithmetic was done."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_capture_spends_no_flops_and_changes_nothing():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    model.train()
    model.layer1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v for k, v in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    with DeviceLog() as log:
        capture(model, 224)
    assert log.devices == {"meta"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p is params[k] and p.device.type == "cpu" for k, p in model.named_parameters())
    assert flags == {n: m.training for n, m in model.named_modules()}
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


# -- clear errors -------------------------------------------------------------------------------------------
def test_unsupported_op_names_op_and_module():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sequential(nn.Identity(), Lambda(lambda x: x.cumsum(2))))
    with pytest.raises(rflens.UnsupportedOpError, match=r"aten\.cumsum in module '1\.1'"):
        rflens.receptive_field(model, 16)


def test_input_too_small_names_the_layer():
    model = nn.Sequential(nn.Conv2d(1, 1, 7, stride=2), nn.Conv2d(1, 1, 5))
    with pytest.raises(rflens.InputTooSmallError, match=r"module '1'"):
        rflens.receptive_field(model, 8)


def test_wrong_channel_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(rflens.CaptureError, match=r"module '0'.*channels"):
        rflens.receptive_field(model, 16, in_channels=1)


def test_wrong_number_of_spatial_dims():
    with pytest.raises(rflens.CaptureError, match="2-D"):
        rflens.receptive_field(nn.Conv2d(1, 1, 3), (16, 16, 16))


class NeedsData(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum().item() > 1e9:  # data-dependent Python
            y = y * 2
        return y


def test_model_that_cannot_run_on_meta_suggests_cpu_and_cpu_works():
    with pytest.raises(rflens.MetaDeviceError, match="device='cpu'.*--device cpu"):
        rflens.receptive_field(NeedsData(), 16)
    assert rflens.receptive_field(NeedsData(), 16, device="cpu").layer("conv").rf == (3, 3)


def test_no_convolution_needs_explicit_layout():
    with pytest.raises(rflens.CaptureError, match="in_channels"):
        rflens.receptive_field(nn.Sequential(nn.MaxPool2d(2)), 16)
    layer = rflens.receptive_field(nn.Sequential(nn.MaxPool2d(2)), (16, 16), in_channels=1).layer("0")
    assert layer.rf == (2, 2)


def test_real_device_capture_needs_the_model_there():
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    if torch.cuda.is_available():
        with pytest.raises(rflens.CaptureError, match="move the model"):
            rflens.receptive_field(model, 8, device="cuda")
        assert rflens.receptive_field(model.cuda(), 8, device="cuda").layer("0").rf == (3, 3)
    else:
        with pytest.raises(rflens.CaptureError, match="no CUDA device"):
            rflens.receptive_field(model, 8, device="cuda")


def test_manual_zero_padding_by_concatenation_is_an_offset():
    """torch.cat([zeros, x], dim=2) pads one row on top: a shift, not prefix tokens."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Lambda(lambda x: torch.cat([x.new_zeros(1, 2, 1, x.shape[3]), x], 2)),
                          nn.Conv2d(2, 1, 3))
    result = rflens.receptive_field(model, 10)
    layer = result.layer("2")
    assert layer.rf == (5, 5) and layer.padding == (1, 0) and layer.output_size == (7, 6)
    assert np.argwhere(result.support("2", (0, 0))).tolist() == [[r, c] for r in range(4) for c in range(5)]


def test_concatenating_a_pooled_vector_with_a_map_keeps_the_map():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            g = y.mean((2, 3), keepdim=True).expand_as(y)
            return torch.cat([g, y], 1)

    layer = rflens.receptive_field(Net(), 8).layer("")
    assert layer.is_global and layer.rf == (3, 3) and layer.output_size == (8, 8)


def test_pooled_maps_are_listed_and_flattened_vectors_are_not():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    result = rflens.receptive_field(model, 16)
    pooled = result.layer("1")
    assert pooled.is_global and pooled.rf == (None, None) and pooled.output_size == (1, 1)
    assert [layer.name for layer in result.layers] == ["0", "1"]


class PoolUpsampleGate(nn.Module):
    """GhostNetV2's DFC attention at a 7x7 map: pool to 3x3, upsample to 7x7, multiply: strides 1 and 2*3/7 meet."""

    def __init__(self, ndim=1):
        super().__init__()
        self.conv = [nn.Conv1d, nn.Conv2d][ndim - 1](1, 1, 1)

    def forward(self, x):
        pool = F.avg_pool1d if x.dim() == 3 else F.avg_pool2d
        gate = F.interpolate(pool(self.conv(x), 2, 2), size=x.shape[2:], mode="nearest")
        return x * torch.sigmoid(gate)


def test_paths_of_different_strides_give_the_largest_field_over_units():
    layer = rflens.receptive_field(PoolUpsampleGate(), (7,), in_channels=1).layer("")
    # unit u reads pixel u and the pooled pair 2*floor(3u/7) .. +1: spans 2, 2, 3, 2, 3, 2, 3
    assert layer.stride == (None,) and layer.rf == (3,) and layer.padding == (0,) and layer.rf_min == (1,)


class RoutedConv(nn.Module):
    """CondConv's pattern: the kernel is a mixture of experts weighted by a routing of the pooled input."""

    def __init__(self):
        super().__init__()
        self.experts = nn.Parameter(torch.randn(3, 2, 1, 3, 3))
        self.route = nn.Linear(1, 3)

    def forward(self, x):
        weights = torch.sigmoid(self.route(x.mean((2, 3))))[0]
        return F.conv2d(x, (weights[:, None, None, None, None] * self.experts).sum(0), padding=1)


def test_convolution_with_weights_from_pooled_features_is_global():
    layer = rflens.receptive_field(RoutedConv(), (9, 9), in_channels=1).layer("")
    assert layer.is_global and layer.rf == (3, 3) and layer.padding == (1, 1)


class PooledQueries(nn.Module):
    """Attention of every query of a 2x pooled map over all keys of the full map (MViT's pooled attention)."""

    def forward(self, x):
        q = F.max_pool2d(x, 2).flatten(2).transpose(1, 2)
        k = x.flatten(2)
        out = (q @ k).softmax(-1) @ k.transpose(1, 2)
        return out.transpose(1, 2).reshape(1, x.shape[1], x.shape[2] // 2, x.shape[3] // 2)


class PooledWindowQueries(nn.Module):
    """Pooled queries against the keys of their window only (Hiera's mask units): windows at two resolutions."""

    def forward(self, x):
        def windows(t, w):
            c, h, wd = t.shape[1:]
            return t.view(1, c, h // w, w, wd // w, w).permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, c)

        q, k = windows(F.max_pool2d(x, 2), 2), windows(x, 4)
        return (q @ k.transpose(1, 2)).softmax(-1) @ k


def test_attention_over_a_whole_map_at_another_resolution_is_global():
    layer = rflens.receptive_field(nn.Sequential(nn.Conv2d(1, 2, 1), PooledQueries()), 8).layer("1")
    assert layer.is_global and layer.rf == (2, 2) and layer.stride == (2, 2) and layer.output_size == (4, 4)


def test_windows_at_two_resolutions_are_refused():
    with pytest.raises(rflens.UnsupportedOpError, match="different resolutions"):
        rflens.receptive_field(nn.Sequential(nn.Conv2d(1, 2, 1), PooledWindowQueries()), 8)


def test_pointwise_conv_over_token_dims():
    """MobileViTv2 applies 1x1 convs to (B, C, pixels-in-patch, patches): pointwise, whatever the dims hold."""

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            p = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, 4, -1)
            p = self.proj(p)
            return p.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)

    layer = rflens.receptive_field(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Patches()), 8).layer("1")
    assert layer.rf == (3, 3) and not layer.is_global


def test_input_layout_from_timm_pretrained_cfg():
    model = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 4, 3))  # space-to-depth stem: first conv sees 12
    model.pretrained_cfg = {"input_size": (3, 32, 32)}
    assert rflens.receptive_field(model, 32).layer("1").rf == (6, 6)


def test_reducing_the_patches_of_a_split_axis_is_global():
    """MobileViTv2's separable attention: a context vector summed over patches gates every pixel."""

    class Separable(nn.Module):
        def forward(self, x):
            b, c, h, w = x.shape
            p = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, 4, -1)
            context = (p.softmax(-1) * p).sum(-1, keepdim=True)
            out = p * context.expand_as(p)
            return out.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)

    layer = rflens.receptive_field(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Separable()), 8).layer("1")
    assert layer.is_global and layer.rf == (3, 3)


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 4), nn.InstanceNorm2d(4), nn.LayerNorm([4, 16, 16])])
def test_normalisations_keep_every_position(norm):
    """A norm scales each element by statistics of the map: positions stay (a regression: GroupNorm and
    InstanceNorm made the map look 1x1, so the next convolution lost its geometry)."""
    from rflens.rf import analyse

    graph = capture(nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), norm, nn.Conv2d(4, 4, 3, 2, 1)), 32)
    assert [n.sizes for n in graph.nodes if n.op == "convolution"] == [(16, 16), (8, 8)]
    last = analyse(graph).layer("2")
    assert last.rf == (7, 7) and last.stride == (4, 4) and last.is_global
