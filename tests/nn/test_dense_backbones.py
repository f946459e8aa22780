"""Alice's backbone: SwinUNETR read at three depths, with SwinUNETR's own weights."""

from __future__ import annotations

import torch

from medssl.nn.dense_backbones import DenseSwinBackbone


def test_outputs_have_the_documented_shapes_and_the_reconstruction_is_swinunetrs_output():
    torch.manual_seed(0)
    backbone = DenseSwinBackbone(feature_size=12, depths=(1, 1, 1, 1), window_size=4).eval()
    images = torch.rand(1, 1, 32, 32, 64)  # the cheapest crop with two tokens along one axis
    with torch.no_grad():
        out = backbone(images)
        direct = backbone.network(images)
    assert out["global"].shape == (1, 192)
    assert out["encoder_tokens"].shape == (1, 2, 192) and out["decoder_tokens"].shape == (1, 16, 96)
    torch.testing.assert_close(out["reconstruction"], direct)  # the same network, read at more depths
    torch.testing.assert_close(out["global"], out["encoder_tokens"].mean(dim=1))


def test_weights_drop_into_a_monai_swinunetr_for_segmentation():
    from monai.networks.nets.swin_unetr import SwinUNETR

    backbone = DenseSwinBackbone(feature_size=12, depths=(1, 1, 1, 1), window_size=4)
    segmenter = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), window_size=4)
    weights = {k: v for k, v in backbone.network.state_dict().items() if not k.startswith("out.")}
    missing, unexpected = segmenter.load_state_dict(weights, strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"out"}  # only the new class head
