"""MADELEINE's slide encoder, its loss plumbing (missing stains, skipped stains, the InfoNCE term by hand,
GOT's token sampling) and the RankMe checkpoint rule."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from medssl.losses import graph_optimal_transport, symmetric_info_nce
from medssl.methods.callbacks import RankMeCheckpoint, chosen_epoch
from medssl.methods.madeleine import Madeleine
from medssl.nn.slide_encoder import MultiHeadSlideEncoder

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*", "ignore:.*self.log.*")
STAINS = ["HE", "ER", "PR"]


def small(**overrides) -> Madeleine:
    torch.manual_seed(0)
    settings = dict(in_dim=8, hidden_dim=6, heads=2, embed_dim=5, token_dim=4, dropout=0.0, attention_dropout=0.0)
    return Madeleine(stains=STAINS, **{**settings, **overrides})


def stain_batch(cases: int = 4, tokens: int = 12, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    present = torch.ones(cases, len(STAINS), dtype=torch.bool)
    return {
        "tokens": torch.randn(cases, len(STAINS), tokens, 8, generator=generator),
        "present": present,
        "stains": list(STAINS),
    }


@pytest.mark.parametrize("input_norm", [False, True])
def test_the_slide_encoder_pools_a_padded_set_like_the_set_itself(input_norm):
    encoder = MultiHeadSlideEncoder(
        in_dim=8,
        hidden_dim=6,
        heads=3,
        embed_dim=5,
        token_dim=4,
        dropout=0.0,
        attention_dropout=0.0,
        stains=2,
        stain_dim=3,
        input_norm=input_norm,
    )  # training mode: with input_norm, batch statistics over the real patches only
    patches = torch.randn(1, 7, 8) * 3 + 5
    padded = torch.cat([patches, torch.full((1, 5, 8), 1e3)], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 5])
    stain = torch.tensor([1])
    alone, with_padding = encoder(patches, stain=stain), encoder(padded, mask, stain=stain)
    torch.testing.assert_close(with_padding.slide, alone.slide)
    assert alone.slide.shape == (1, 5) and alone.tokens.shape == (1, 7, 18) and alone.attention.shape == (1, 3, 7)
    torch.testing.assert_close(with_padding.attention.sum(-1), torch.ones(1, 3))
    assert (with_padding.attention[..., 7:] == 0).all()
    assert not torch.allclose(encoder(patches, stain=torch.tensor([0])).slide, alone.slide)  # the stain matters
    with pytest.raises(ValueError, match="pass stain"):
        encoder(patches)
    with pytest.raises(ValueError, match="in_dim=8"):
        encoder(torch.randn(1, 7, 9), stain=stain)


def test_the_loss_is_the_hand_sum_of_infonce_and_got_over_stains():
    model = small(temperature=0.5, got_tokens=1000)
    batch = stain_batch()
    terms, reference = model.alignment_losses(batch)
    encoded = [model.slide_encoder(batch["tokens"][:, m], stain=torch.full((4,), m)) for m in range(3)]
    slides = [e.slide for e in encoded]
    local = [model.slide_encoder.local_tokens(e.tokens) for e in encoded]
    info = sum(symmetric_info_nce(slides[0], slides[k], 0.5) for k in (1, 2))
    got = sum(graph_optimal_transport(local[0], local[k], reduction="mean") for k in (1, 2))
    torch.testing.assert_close(terms["info_nce"], info)
    torch.testing.assert_close(terms["got"], got)
    torch.testing.assert_close(terms["loss"], info + got)
    torch.testing.assert_close(reference, slides[0])
    assert float(terms["stains_aligned"]) == 2


def test_missing_stains_never_enter_the_loss():
    model = small(got_tokens=1000)
    batch = stain_batch(cases=5)
    batch["present"][0, 1] = batch["present"][3, 1] = False  # two cases lack ER
    batch["present"][1:, 2] = False  # only case 0 has PR: fewer than two cases, so PR is skipped
    clean, _ = model.alignment_losses(batch)
    poisoned = dict(batch, tokens=batch["tokens"].clone())
    poisoned["tokens"][~batch["present"]] = float("nan")  # whatever sits in a missing slot
    dirty, _ = model.alignment_losses(poisoned)
    assert torch.isfinite(dirty["loss"]) and float(dirty["stains_aligned"]) == 1
    torch.testing.assert_close(dirty["loss"], clean["loss"])
    er = [1, 2, 4]  # the cases with both H&E and ER
    encoded = [model.slide_encoder(batch["tokens"][er, m], stain=torch.full((3,), m)) for m in (0, 1)]
    torch.testing.assert_close(clean["info_nce"], symmetric_info_nce(encoded[0].slide, encoded[1].slide, 0.1))
    dirty["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_got_sees_sampled_tokens_of_every_position(monkeypatch):
    seen: list[torch.Tensor] = []
    import medssl.methods.madeleine as madeleine

    def spy(x, y, **kwargs):
        seen.append(x.detach())
        return x.sum() * 0.0

    monkeypatch.setattr(madeleine, "graph_optimal_transport", spy)
    model = small(got_tokens=16, token_dim=8)
    model.slide_encoder.token_projector = torch.nn.Identity()  # local tokens = pre-attention tokens
    batch = stain_batch(cases=3, tokens=300)
    model.alignment_losses(batch)
    encoded = model.slide_encoder(batch["tokens"][:, 0], stain=torch.zeros(3, dtype=torch.long)).tokens
    x = seen[0]
    assert x.shape == (3, 16, encoded.shape[-1])  # 16 tokens of each of the 3 cases, not 3 of 16
    positions = [[int((encoded[c] == row).all(-1).nonzero()[0]) for row in x[c]] for c in range(3)]
    assert max(max(p) for p in positions) >= 3  # positions beyond the batch size: sampled along tokens
    assert all(len(set(p)) == 16 for p in positions)  # without replacement


def test_rankme_rule_takes_the_best_epoch_after_warm_up():
    history = [(0, 9.0), (1, 3.0), (2, 5.0), (3, 5.0), (4, 4.0)]
    assert chosen_epoch(history, warmup_epochs=1) == 2  # epoch 0 is best overall but inside the warm-up; ties: earliest
    assert chosen_epoch(history, warmup_epochs=0) == 0
    assert chosen_epoch(history, warmup_epochs=5) is None


class ScriptedRank(pl.LightningModule):
    """Each epoch's training embeddings have the scripted rank, so RankMe follows the script."""

    ranks = [6, 1, 3, 5, 2, 4]

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        rank = self.ranks[self.current_epoch]
        generator = torch.Generator().manual_seed(batch_idx)
        basis = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0][:rank]
        embeddings = torch.randn(16, rank, generator=generator) @ basis
        return {"loss": (self.weight**2).sum(), "embeddings": embeddings}

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_rankme_checkpoint_keeps_the_scripted_best_epoch(tmp_path):
    callback = RankMeCheckpoint(warmup_epochs=1, dirpath=str(tmp_path))
    trainer = pl.Trainer(
        max_epochs=6,
        callbacks=[callback],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ScriptedRank())
    values = [value for _, value in callback.history]
    assert sorted(range(6), key=values.__getitem__) == sorted(range(6), key=ScriptedRank.ranks.__getitem__)
    assert callback.best_epoch == 3  # rank 5; epoch 0 (rank 6) is inside the warm-up
    saved = torch.load(tmp_path / "rankme-best.ckpt", weights_only=True)
    assert saved["epoch"] == 3
