"""MADELEINE: multistain pretraining of a slide encoder (Jaume et al., "Multistain Pretraining for Slide
Representation Learning in Pathology", ECCV 2024).

Serial sections of one tissue block are stained differently: H&E, and immunohistochemistry (ER, PR,
HER2, Ki-67, ...). Every slide of a case is a set of patch features (``medssl embed``); one slide
encoder, shared by all stains (:class:`~medssl.nn.slide_encoder.MultiHeadSlideEncoder`: a pre-attention
MLP, 4 gated-attention heads, a projector), embeds each slide. For every stain ``k`` other than the
reference (H&E), over the cases that have both:

- **global alignment**: a symmetric InfoNCE between the H&E and the stain-``k`` slide embeddings
  (:func:`~medssl.losses.symmetric_info_nce`): a case's H&E slide must find its own IHC slide among
  the batch's, and the reverse;
- **local alignment**: graph optimal transport between the two slides' token sets
  (:func:`~medssl.losses.graph_optimal_transport`: Wasserstein by IPOT on a thresholded cosine cost,
  plus Gromov-Wasserstein on the intra-slide costs), on at most ``got_tokens`` tokens per slide sampled
  **along the token axis**, one value per case, averaged over cases;
- optionally (``intra_weight`` > 0, off in the paper's runs) an intra-stain InfoNCE between two random
  halves of each slide's patches, within H&E and within stain ``k``.

The loss sums these over stains; a stain with fewer than two such cases in the (global) batch is
skipped, and a missing stain never enters any term. At inference only H&E is needed: the slide
embedding of an H&E slide is the representation (``medssl embed-slides``), and the checkpoint to keep is
chosen without labels, by the RankMe of the training H&E slide embeddings after a warm-up
(:class:`~medssl.methods.callbacks.RankMeCheckpoint`).

Where this departs from the released code (see docs/methods/madeleine.md): the InfoNCE temperature defaults
to 0.1 (the scripts' 0.001 makes the softmax a hard maximum: ``temperature`` restores it); GOT samples
tokens along the token axis (the code permutes the batch size and takes that many tokens); GOT is
averaged over cases (``got_reduction="sum"`` is the code's sum over the batch, whose scale grows with
the batch) and its cost threshold is set per case (``got_threshold_over="batch"``: the code's batch-wide
one); everything is gathered across DDP ranks, so two processes equal one on the global batch.
"""

from __future__ import annotations

from typing import Literal

import torch

from medssl.errors import InputError
from medssl.eval import rankme
from medssl.losses import graph_optimal_transport, sample_tokens, symmetric_info_nce
from medssl.methods.base import MedsslModule
from medssl.nn.distributed import all_reduce_sum, gather, world_size
from medssl.nn.slide_encoder import MultiHeadSlideEncoder

DEFAULT_STAINS = ["HE", "ER", "PR", "HER2", "KI67"]


class Madeleine(MedsslModule):
    """Multistain slide-encoder pretraining on :class:`~medssl.data.StainSetDataModule` batches
    (``tokens [B, M, T, D]``, ``present [B, M]``, ``stains``).

    ``stains`` lists every stain the model knows (the stain embedding's vocabulary when
    ``stain_dim`` > 0; a batch may hold any of them, in any order); ``reference_stain`` is the one aligned
    with all others and used at inference. Optimiser defaults follow the released scripts: AdamW, lr 1e-4,
    weight decay 0.01 (PyTorch's default, which the scripts end up using), 5 warm-up epochs, cosine to
    1e-8. ``input_norm`` standardises patch features first (not in the paper; see
    :class:`~medssl.nn.slide_encoder.MultiHeadSlideEncoder`): for weak patch encoders."""

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 512,
        heads: int = 4,
        embed_dim: int = 512,
        token_dim: int = 128,
        dropout: float = 0.1,
        attention_dropout: float = 0.25,
        stains: list[str] | None = None,
        reference_stain: str = "HE",
        stain_dim: int = 0,
        input_norm: bool = False,
        temperature: float = 0.1,
        got_weight: float = 1.0,
        got_tokens: int = 256,
        got_threshold: float = 0.1,
        got_reduction: Literal["mean", "sum"] = "mean",
        got_threshold_over: Literal["case", "batch"] = "case",
        intra_weight: float = 0.0,
        optimizer: str = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-8,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.stains = list(stains or DEFAULT_STAINS)
        if reference_stain not in self.stains:
            raise InputError(f"reference_stain {reference_stain!r} is not among stains {self.stains}")
        if temperature <= 0 or got_tokens < 1:
            raise ValueError(f"need temperature > 0 and got_tokens ≥ 1, got {temperature} and {got_tokens}")
        self.slide_encoder = MultiHeadSlideEncoder(
            in_dim,
            hidden_dim,
            heads,
            embed_dim,
            token_dim,
            dropout,
            attention_dropout,
            len(self.stains),
            stain_dim,
            input_norm,
        )
        self._rankme_embeddings: list[torch.Tensor] = []

    def encoders(self) -> dict[str, torch.nn.Module]:
        return {"slide_encoder": self.slide_encoder}

    # -- the slide encoder ---------------------------------------------------------------------
    def slide_embedding(self, patches: torch.Tensor, stain: str | None = None) -> torch.Tensor:
        """The slide embedding ``[embed_dim]`` of one slide's patch features ``[N, D]`` (all of them: the
        attention pools any number), stained ``stain`` (default: the reference stain, H&E)."""
        stain_index = self._stain_indices([stain or self.hparams.reference_stain], patches.device)
        return self.slide_encoder(patches[None], stain=stain_index).slide[0]

    def _stain_indices(self, names: list[str], device: torch.device) -> torch.Tensor:
        unknown = [name for name in names if name not in self.stains]
        if unknown:
            raise InputError(f"stains {unknown} are not among the model's stains {self.stains}")
        return torch.tensor([self.stains.index(name) for name in names], device=device)

    # -- the objective --------------------------------------------------------------------------
    def alignment_losses(self, batch: dict, distributed: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The loss terms of a batch (summed over stains; ``loss`` their weighted total) and the reference
        stain's slide embeddings ``[R, embed_dim]`` of the cases that have it.

        ``distributed``: gather slide embeddings across DDP ranks, so every rank computes the global
        InfoNCE, and scale each rank's local GOT sum by (world size / global case count), so DDP's
        gradient average reproduces the single-process mean (validation, where every rank reads every
        case, passes False)."""
        h = self.hparams
        tokens, present = batch["tokens"], batch["present"].bool()
        names = list(batch["stains"])
        if h.reference_stain not in names:
            raise InputError(f"the batch's stains {names} lack the reference stain {h.reference_stain!r}")
        ref = names.index(h.reference_stain)
        stain_ids = self._stain_indices(names, tokens.device)
        cases, slots = present.nonzero(as_tuple=True)
        encoded = self.slide_encoder(tokens[cases, slots], stain=stain_ids[slots])
        slides = encoded.slide.new_zeros(*present.shape, encoded.slide.shape[-1]).index_put(
            (cases, slots), encoded.slide
        )
        row_of = torch.full(present.shape, -1, dtype=torch.long, device=tokens.device)
        row_of[cases, slots] = torch.arange(len(cases), device=tokens.device)
        halves = self._half_views(tokens[cases, slots], stain_ids[slots]) if h.intra_weight > 0 else None

        share = distributed and world_size() > 1
        all_slides = gather(slides) if share else slides
        all_present = gather(present.to(torch.uint8)).bool() if share else present
        zero = slides.sum() * 0.0  # keeps every term in the graph when a batch has nothing to align
        terms = {"info_nce": zero, "got": zero, "intra": zero}
        aligned = 0
        for k in range(len(names)):
            both = all_present[:, ref] & all_present[:, k]
            if k == ref or int(both.sum()) < 2:
                continue
            aligned += 1
            terms["info_nce"] = terms["info_nce"] + symmetric_info_nce(
                all_slides[both, ref], all_slides[both, k], h.temperature
            )
            if h.got_weight > 0:  # 0 turns the local alignment off (and saves its cost)
                terms["got"] = terms["got"] + self._got(encoded.tokens, row_of, present, ref, k, share)
            if halves is not None:
                terms["intra"] = terms["intra"] + self._intra(halves, row_of, present, both, ref, k, share)
        terms["loss"] = terms["info_nce"] + h.got_weight * terms["got"] + h.intra_weight * terms["intra"]
        terms["stains_aligned"] = torch.tensor(float(aligned))
        return terms, slides[present[:, ref], ref]

    def _got(
        self, tokens: torch.Tensor, row_of: torch.Tensor, present: torch.Tensor, ref: int, k: int, share: bool
    ) -> torch.Tensor:
        """GOT between the reference and stain-``k`` token sets of this rank's cases that have both, as
        its share of the global mean over cases (or sum, ``got_reduction="sum"``)."""
        h = self.hparams
        local = present[:, ref] & present[:, k]
        count = all_reduce_sum(local.sum().to(tokens.dtype)) if share else local.sum().to(tokens.dtype)
        if not bool(local.any()):
            return tokens.sum() * 0.0
        x = self.slide_encoder.local_tokens(sample_tokens(tokens[row_of[local, ref]], h.got_tokens))
        y = self.slide_encoder.local_tokens(sample_tokens(tokens[row_of[local, k]], h.got_tokens))
        total = graph_optimal_transport(
            x, y, threshold=h.got_threshold, reduction="sum", threshold_over=h.got_threshold_over
        )
        ranks = world_size() if share else 1
        return total * ranks / (count if h.got_reduction == "mean" else 1.0)

    def _half_views(self, tokens: torch.Tensor, stain_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide embeddings of two disjoint random halves of each slide's patches (intra-stain views)."""
        order = torch.randperm(tokens.shape[1], device=tokens.device)
        half = tokens.shape[1] // 2
        first = self.slide_encoder(tokens[:, order[:half]], stain=stain_ids).slide
        second = self.slide_encoder(tokens[:, order[half : 2 * half]], stain=stain_ids).slide
        return first, second

    def _intra(
        self,
        halves: tuple[torch.Tensor, torch.Tensor],
        row_of: torch.Tensor,
        present: torch.Tensor,
        both: torch.Tensor,
        ref: int,
        k: int,
        share: bool,
    ) -> torch.Tensor:
        """InfoNCE between the two half views of each slide, within the reference stain and within
        stain ``k``, over the (global) cases that have both."""
        local = present[:, ref] & present[:, k]
        loss = halves[0].sum() * 0.0
        for slot in (ref, k):
            views = [view[row_of[local, slot]] for view in halves]
            if share:
                views = [_gather_rows(view, local, both) for view in views]
            loss = loss + symmetric_info_nce(views[0], views[1], self.hparams.temperature)
        return loss

    # -- Lightning -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        terms, reference = self.alignment_losses(batch)
        size = len(batch["tokens"])
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=size)
        return {"loss": terms["loss"], "embeddings": reference.detach()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms, reference = self.alignment_losses(batch, distributed=False)
        for name in ("loss", "info_nce", "got"):
            self.log(f"val/{name}", terms[name], batch_size=len(batch["tokens"]), sync_dist=True)
        self._rankme_embeddings.append(reference.detach().float().cpu())

    def on_validation_epoch_end(self) -> None:
        if self._rankme_embeddings:
            self.log("val/rankme", rankme(torch.cat(self._rankme_embeddings)), sync_dist=True)
        self._rankme_embeddings = []


def _gather_rows(rows: torch.Tensor, local: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
    """This rank's ``rows`` (one per local case in ``local``) placed among every rank's, in the global
    order of ``both``: gathered through a zero-padded ``[B, ...]`` tensor so ranks' shapes agree."""
    padded = rows.new_zeros(len(local), *rows.shape[1:]).index_put((local.nonzero(as_tuple=True)[0],), rows)
    return gather(padded)[both]
