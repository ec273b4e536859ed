"""Every classification CNN of torchvision and a broad sample of timm trace without error; SE blocks and ViT
attention come out global. Models are built on the meta device (no weights, no init cost)."""

from __future__ import annotations

import pytest
import torch

import rflens
from rflens.sources import load_model

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

TORCHVISION = torchvision.models.list_models(module=torchvision.models)

TIMM = [
    "resnet50", "resnet50d", "resnext50_32x4d", "regnety_008", "regnetx_002", "efficientnet_b0",
    "tf_efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "densenet121", "dla34", "dpn68",
    "inception_v3", "inception_v4", "xception41", "cspdarknet53", "res2net50_26w_4s", "hrnet_w18_small",
    "ghostnet_100", "vgg16", "seresnet50", "repvgg_a2", "rexnet_100", "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "maxvit_tiny_tf_224", "mobilevit_s", "efficientvit_b0", "levit_128",
    "coat_tiny", "nfnet_f0", "resnetv2_50x1_bit", "poolformer_s12", "edgenext_small", "volo_d1_224",
]


def build(factory, name):
    try:
        with torch.device("meta"):
            return factory(name)
    except NotImplementedError:  # a few constructors compute with tensors (torchvision regnets)
        return factory(name)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_classification_models_trace(name):
    model = build(torchvision.models.get_model, name)
    result = rflens.receptive_field(model, 299 if "inception" in name else 224)
    final = max((layer for layer in result.layers if layer.rf[0] is not None), key=lambda layer: layer.node)
    assert final.rf[0] is not None and final.stride[0] in (14, 16, 32)


@pytest.mark.parametrize("name", TIMM)
def test_timm_models_trace(name):
    model = build(lambda n: timm.create_model(n, pretrained=False), name)
    size = 299 if "inception" in name or "xception" in name else 224
    result = rflens.receptive_field(model, size)
    assert result.layers and all(layer.stride[0] is None or layer.stride[0] >= 1 for layer in result.layers)


def test_squeeze_excitation_blocks_are_global():
    result = rflens.receptive_field(build(lambda n: timm.create_model(n), "seresnet50"), 224)
    assert result.layer("layer1.0.se").is_global
    assert not result.layer("layer1.0.conv1").is_global
    assert result.layer("layer4").rf == (427, 427)  # the local paths are those of resnet50


def test_vit_attention_is_global_with_the_patch_as_local_field():
    result = rflens.receptive_field(build(lambda n: timm.create_model(n), "vit_tiny_patch16_224"), 224)
    assert not result.layer("patch_embed").is_global
    block = result.layer("blocks.0")
    assert block.is_global and block.rf == (16, 16) and block.output_size == (14, 14)
    assert result.layer("blocks.0.attn").is_global


def test_swin_windows_stay_local_until_the_window_covers_the_map():
    result = rflens.receptive_field(build(lambda n: timm.create_model(n), "swin_tiny_patch4_window7_224"), 224)
    assert not result.layer("layers.2").is_global  # 14x14 map, 7x7 windows: local
    assert result.layer("layers.3.blocks.0.attn").is_global  # 7x7 map, one window: global


SEGMENTATION_AND_VIDEO = [
    ("fcn_resnet50", (96, 96)), ("deeplabv3_resnet50", (96, 96)), ("deeplabv3_mobilenet_v3_large", (96, 96)),
    ("lraspp_mobilenet_v3_large", (96, 96)), ("r3d_18", (8, 64, 64)), ("mc3_18", (8, 64, 64)),
    ("r2plus1d_18", (8, 64, 64)), ("s3d", (16, 224, 224)), ("swin3d_t", (8, 64, 64)), ("mvit_v2_s", (16, 224, 224)),
]


@pytest.mark.parametrize("name,size", SEGMENTATION_AND_VIDEO, ids=lambda v: v if isinstance(v, str) else "")
def test_segmentation_and_video_models_trace(name, size):
    model = load_model(f"torchvision:{name}", device="meta")
    result = rflens.receptive_field(model, size)
    final = max((layer for layer in result.layers if layer.rf[-1] is not None), key=lambda layer: layer.node)
    assert len(final.rf) == len(size)
    if name.startswith(("deeplabv3", "lraspp")):  # image pooling branch: global
        assert final.is_global and final.output_size == size


def test_cpu_capture_with_fused_attention_agrees_with_meta():
    """On a real device ViT attention runs as one fused op (scaled_dot_product_attention); same answer."""
    model = timm.create_model("vit_tiny_patch16_224")
    meta = rflens.receptive_field(model, 224)
    cpu = rflens.receptive_field(model, 224, device="cpu")
    assert any("scaled_dot_product" in node.op for node in cpu.graph.nodes)
    assert [(x.name, x.rf, x.is_global) for x in meta.layers] == [(x.name, x.rf, x.is_global) for x in cpu.layers]
