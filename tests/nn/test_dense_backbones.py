"""Alice's backbone: MONAI's SwinUNETR as a medssl encoder, read at every decoder depth, with
SwinUNETR's own weights and any input size."""

from __future__ import annotations

import pytest
import torch

from medssl.nn.backbones import build_encoder
from medssl.nn.decoders import SwinSegmentation, segmentation_network

SMALL = dict(name="swin_unetr", spatial_dims=3, in_channels=1, feature_size=12, depths=(1, 1, 1, 1), window_size=4)


def test_readings_have_the_documented_shapes_and_the_reconstruction_is_swinunetrs_output():
    torch.manual_seed(0)
    encoder = build_encoder(**SMALL).eval()
    images = torch.rand(1, 1, 32, 32, 64)  # the cheapest crop with two tokens along one axis
    with torch.no_grad():
        out = encoder.dense(images)
        direct = encoder.network(images)
        pooled = encoder(images)
    assert out["global"].shape == (1, 192) and encoder.out_dim == 192
    assert out["encoder_tokens"].shape == (1, 2, 192) and out["decoder_tokens"].shape == (1, 16, 96)
    torch.testing.assert_close(out["reconstruction"], direct)  # the same network, read at more depths
    torch.testing.assert_close(out["global"], out["encoder_tokens"].mean(dim=1))
    torch.testing.assert_close(pooled, out["global"])


def test_any_size_is_padded_to_32_and_every_map_cropped_back():
    encoder = build_encoder(**SMALL).eval()
    with torch.no_grad():
        maps = encoder.decoder_maps(torch.rand(1, 1, 20, 33, 40))
        dense = encoder.dense_maps(torch.rand(1, 1, 20, 33, 40))
    sides = [(1, 2, 2), (2, 3, 3), (3, 5, 5), (5, 9, 10), (10, 17, 20), (20, 33, 40)]  # ceil(side / stride)
    assert [tuple(m.shape[2:]) for m in maps] == sides
    assert dense["coarse"].shape == (1, 96, 2, 3, 3) and dense["fine"].shape == (1, 24, 5, 9, 10)
    torch.testing.assert_close(dense["fine"].norm(dim=1), torch.ones(1, 5, 9, 10))


def test_weights_drop_into_a_monai_swinunetr_and_the_segmentation_network_is_that_swinunetr():
    from monai.networks.nets.swin_unetr import SwinUNETR

    torch.manual_seed(0)
    encoder = build_encoder(**SMALL)
    monai_net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), window_size=4)
    weights = {k: v for k, v in encoder.network.state_dict().items() if not k.startswith("out.")}
    missing, unexpected = monai_net.load_state_dict(weights, strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"out"}  # only the new class head
    network = segmentation_network(encoder, num_classes=3)
    assert isinstance(network, SwinSegmentation)
    monai_net.out.load_state_dict(network.head.state_dict())
    images = torch.rand(1, 1, 32, 32, 64)  # instance norm needs ≥ 2 bottleneck voxels
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(images), monai_net.eval()(images))


def test_a_2d_swin_is_refused():
    with pytest.raises(ValueError, match="3D"):
        build_encoder(**{**SMALL, "spatial_dims": 2})


def test_decoder_maps_stop_at_the_finest_stride_asked_and_dense_maps_need_only_stride_4():
    torch.manual_seed(0)
    encoder = build_encoder(**SMALL).eval()
    images = torch.rand(1, 1, 20, 33, 40)
    with torch.no_grad():
        every, down_to_4 = encoder.decoder_maps(images), encoder.decoder_maps(images, finest=4)
        dense = encoder.dense_maps(images)
    assert len(every) == 6 and len(down_to_4) == 4
    for full, partial in zip(every, down_to_4):
        torch.testing.assert_close(partial, full, rtol=0, atol=0)
    torch.testing.assert_close(dense["coarse"], torch.nn.functional.normalize(every[1], dim=1))
    torch.testing.assert_close(dense["fine"], torch.nn.functional.normalize(every[3], dim=1))
