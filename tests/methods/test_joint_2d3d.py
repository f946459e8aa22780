"""Joint 2D/3D intra-inter contrastive clustering: which losses a run optimises and what it trains, the
shared f_intra inside the volume encoder, masking, frozen f_intra in the mask stage, and the encoder
contract (f_intra as a plain 2D encoder, f_intra + f_inter as the volume encoder)."""

from __future__ import annotations

import pytest
import torch

from medssl.methods.joint_2d3d import JointIntraInter, loss_weights

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*", "ignore:.*self.log.*")

SMALL = dict(
    backbone={"name": "resnet18", "spatial_dims": 2, "in_channels": 1, "width": 0.25},
    d_model=32,
    transformer={"layers": 1, "ffn_dim": 48, "heads": 4, "dropout": 0.0},
    proj_hidden_dim=32,
    intra_proj_dim=16,
    intra_prototypes=8,
    inter_prototypes=4,
    inter_clustering="swav",
)


def small(**kwargs) -> JointIntraInter:
    torch.manual_seed(0)
    return JointIntraInter(**{**SMALL, **kwargs})


def batch(b: int = 2, n: int = 6, size: int = 32) -> dict:
    torch.manual_seed(1)
    return {"views": [torch.rand(b, 1, n, size, size) for _ in range(2)], "index": torch.arange(b)}


def test_modes_choose_the_losses():
    assert loss_weights("joint", None, 1.0, 0.5, 2.0) == {"intra": 1.0, "inter": 0.5, "mask": 2.0}
    assert loss_weights("joint", None, 1.0, 0.0, 1.0) == {"intra": 1.0, "mask": 1.0}
    assert loss_weights("staged", "mask", 1.0, 1.0, 1.0) == {"mask": 1.0}
    for bad in (("staged", None), ("joint", "intra"), ("both", None)):
        with pytest.raises(ValueError):
            loss_weights(*bad, 1.0, 1.0, 1.0)


def grads_of(model: JointIntraInter) -> dict[str, bool]:
    parts = {
        "f_intra": model.encoder,
        "projection": model.stack.projection,
        "f_inter": model.f_inter,
        "mask": model.mask_head,
        "intra_head": model.intra_projector,
    }
    return {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()) for name, m in parts.items()
    }


def test_joint_training_reaches_every_part_and_logs_each_loss(monkeypatch):
    model = small(freeze_prototypes_steps=0)
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, float(value.detach())))
    loss = model.training_step(batch(), 0)
    loss.backward()
    assert set(logged) == {"train/intra", "train/inter", "train/mask", "train/loss"}
    assert logged["train/loss"] == pytest.approx(logged["train/intra"] + logged["train/inter"] + logged["train/mask"])
    assert all(grads_of(model).values()), grads_of(model)


@pytest.mark.parametrize(
    "stage, trained",
    [
        ("intra", {"f_intra", "projection", "intra_head"}),
        ("mask", {"projection", "f_inter", "mask"}),
        ("inter", {"f_intra", "projection", "f_inter"}),
    ],
)
def test_each_stage_trains_only_its_parts(stage, trained):
    model = small(mode="staged", stage=stage, freeze_prototypes_steps=0)
    model.training_step(batch(), 0).backward()
    assert {name for name, has in grads_of(model).items() if has} == trained
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_mask_stage_keeps_f_intra_and_its_batchnorm_statistics_fixed():
    model = small(mode="staged", stage="mask")
    model.train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.on_train_batch_start(batch(), 0)
    model.training_step(batch(), 0).backward()
    assert not model.encoder.training
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


def test_volume_encoder_shares_f_intra_and_gives_unit_volume_embeddings():
    model = small().eval()
    assert model.stack.slice_encoder is model.encoder
    volumes = batch()["views"][0]
    z = model.volume_encoder(volumes)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    tokens = model.f_inter(model.slice_embeddings(volumes))
    torch.testing.assert_close(z, torch.nn.functional.normalize(tokens.mean(1), dim=1))
    records = model.encoder_records()
    assert set(records) == {"encoder", "volume_encoder"}
    assert records["volume_encoder"]["config"]["name"] == "slice_stack"
    assert records["encoder"]["config"]["spatial_dims"] == 2


def test_intra_loss_pairs_slice_k_with_slice_k():
    """Identical views give codes that match slice for slice; shuffling one view's slices breaks the pairing
    and raises the loss."""
    model = small(freeze_prototypes_steps=0).eval()
    x = model.slice_embeddings(batch()["views"][0])
    aligned = model.intra_loss([x, x], torch.arange(2))
    shuffled = model.intra_loss(
        [x, x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))]], torch.arange(2)
    )
    assert float(shuffled) > float(aligned)


def test_masked_prediction_sees_the_mask_token_at_hidden_slices(monkeypatch):
    model = small(mode="staged", stage="mask", mask_ratio=0.5)
    seen = []
    real = model.stack.transformer.forward
    monkeypatch.setattr(model.stack.transformer, "forward", lambda t: seen.append(t.detach()) or real(t))
    x = model.slice_embeddings(batch()["views"][0]).detach()
    model.mask_loss([x])
    hidden = (seen[0] == model.mask_token.detach()).all(dim=-1)
    assert hidden.sum(1).tolist() == [3, 3]
    torch.testing.assert_close(seen[0][~hidden], x[~hidden])


def test_deepcluster_for_slices_and_volumes_learns_from_last_epochs_bank():
    """Both losses on DeepCluster-v2: the first pass only fills the banks (no pseudo-labels yet: zero
    loss), clustering at the epoch start gives every slice and volume a label, and the loss is then the
    cross-entropy to them."""
    model = small(
        intra_clustering="deepcluster", intra_clusters=[3], inter_clustering="deepcluster", inter_clusters=[2]
    )
    model._build_memories(volumes=2, slices=6)
    assert model.memory("intra").bank.shape == (2, 12, 16) and model.memory("inter").bank.shape == (2, 2, 32)
    tokens = [model.slice_embeddings(v) for v in batch()["views"]]
    first = model.intra_loss(tokens, torch.arange(2))
    first_volumes = model.inter_loss([model.stack.volume_embedding(model.f_inter(x)) for x in tokens], torch.arange(2))
    assert float(first.detach()) == float(first_volumes.detach()) == 0.0
    assert bool(model.memory("intra").filled.all()) and bool(model.memory("inter").filled.all())
    for kind in ("intra", "inter"):
        model.memory(kind).cluster(seed=0)
    tokens = [model.slice_embeddings(v) for v in batch()["views"]]
    assert float(model.intra_loss(tokens, torch.arange(2)).detach()) > 0
    volumes = [model.stack.volume_embedding(model.f_inter(x)) for x in tokens]
    assert float(model.inter_loss(volumes, torch.arange(2)).detach()) > 0
    assert not any("memories" in name for name, _ in model.named_parameters())  # prototypes are frozen buffers


def test_joint_training_lowers_the_loss_on_real_volume_views(volume_cache):
    """The first learning claim of docs/methods/joint-2d3d.md, guarded: on augmented views of a real cached
    volume, 24 AdamW steps of the joint objective lower it. (Its downstream comparisons with random init are within the
    seed spread at toy scale, so no test asserts them: pipelines/joint_2d3d_experiment.py reports them.)"""
    from medssl.data import VolumeDataModule

    data = VolumeDataModule(str(volume_cache), mode="stacks", spatial_size=(8, 32, 32), batch_size=1, num_workers=0)
    data.setup("fit")
    model = small(freeze_prototypes_steps=0)
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  (no trainer to log to)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader, losses = data.train_dataloader(), []
    for epoch in range(24):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]  (medssl's BlockShuffleSampler)
        for batch in loader:
            loss = model.training_step(batch, epoch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, (first, last)


def test_deepcluster_banks_are_sized_and_filled_from_device_views_too(volume_cache):
    """With views made on the device the loader's samples carry a window and view parameters, not
    views: sizing the banks and filling them go through the DataModule's hook, as training does."""
    from types import SimpleNamespace

    from medssl.data import VolumeDataModule

    data = VolumeDataModule(
        str(volume_cache), mode="stacks", spatial_size=(4, 32, 32), batch_size=1, num_workers=0, views_on="device"
    )
    data.setup("fit")
    clusters = dict(intra_clusters=[1], inter_clusters=[1])
    model = small(intra_clustering="deepcluster", inter_clustering="deepcluster", **clusters)
    model._trainer = SimpleNamespace(datamodule=data)  # pyright: ignore[reportAttributeAccessIssue]
    model.setup("fit")
    assert model.memory("intra").bank.shape[1] == 4  # one row per slice of the window
    model._fill_memories()
    assert bool(model.memory("intra").filled.all()) and bool(model.memory("inter").filled.all())
