"""Joint 2D/3D self-supervised learning with intra-inter contrastive clustering (Nguyen et al., AAAI 2023).

One 2D encoder learns from the slices of volumes and, through a transformer across slices, becomes
volume-aware. A sample is two views of a 3D crop (:class:`~medssl.data.VolumeDataModule`,
``mode="stacks"``), slice ``k`` of one view showing the anatomy of slice ``k`` of the other.

- **f_intra**: the 2D encoder, slice by slice, multi-scale pooled and projected to ``d_model``: slice
  embeddings X ``[B, N, d]``.
- **f_inter**: a deformable-attention transformer across the N slices; the volume embedding Z is the
  unit mean of its slice tokens (:class:`~medssl.nn.volume_encoder.SliceStack`).
- **L_intra**: the slices of the two views agree on their clusters (SwAV on X, slice ``k`` with slice
  ``k``, or DeepCluster-v2 on a bank of slices).
- **L_inter**: the two views' volume embeddings agree on their clusters (DeepCluster-v2 heads, k-means
  on a memory bank at each epoch start, centroids as frozen prototypes; or SwAV).
- **L_mask**: hide ``ceil(ratio·N)`` slice tokens behind a learned mask token and predict their
  embeddings through f_inter and a linear head (MSE on the hidden slices).

``mode="joint"`` minimises ``w_intra·L_intra + w_inter·L_inter + w_mask·L_mask`` (the paper).
``mode="staged"`` reproduces the released code, one ``stage`` per run, each started from the previous
run's checkpoint (``init_checkpoint``): ``intra`` (2D clustering), ``mask`` (f_intra frozen) and
``inter`` (everything trained). Parts a run does not train are frozen, so DDP sees no unused weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from torch import nn
from torch.utils.data import default_collate

from medssl.data.datamodules.base import stage_dataset
from medssl.errors import InputError
from medssl.eval import rankme
from medssl.export.encoders import load_checkpoint, load_encoder_weights
from medssl.losses import sinkhorn_knopp, swapped_prediction
from medssl.losses.deepcluster import ClusterMemory
from medssl.losses.masked_prediction import masked_embedding_mse, random_token_mask
from medssl.methods.base import SSLMethod
from medssl.nn.heads import ProjectionHead, PrototypeHead
from medssl.nn.volume_encoder import SliceStack, build_slice_stack, pooled_slice_features

Loss = Literal["intra", "inter", "mask"]
STAGES: tuple[Loss, ...] = ("intra", "mask", "inter")  # the released code's order


class JointIntraInter(SSLMethod):
    """``backbone``: f_intra, any medssl 2D encoder (ResNet-50 in the paper; ``pooling="multiscale"``
    needs a ResNet). ``transformer``: :class:`~medssl.nn.slice_transformer.SliceTransformer` arguments
    (4 layers, FFN 720, dropout 0.1; ``attention_axis="features"`` reproduces the released code's axis).

    Clustering: ``intra_clustering`` / ``inter_clustering`` ``"swav"`` (``*_prototypes`` prototypes,
    Sinkhorn ``epsilon``/``sinkhorn_iterations``, frozen for ``freeze_prototypes_steps``) or
    ``"deepcluster"`` (``*_clusters``: K per head; k-means of ``kmeans_iterations``), ``temperature`` τ.
    Slices are clustered on ``intra_proj_dim`` projections of X (a ``proj_hidden_dim`` MLP), volumes on Z.

    Masking: ``mask_ratio`` of the slices; ``mask_loss="masked"`` averages over hidden slices only,
    ``"reference"`` as the released code (:func:`~medssl.losses.masked_prediction.masked_embedding_mse`).
    The target embeddings are not back-propagated into (f_intra would otherwise learn to be predictable).

    The optimiser defaults are the released code's: LARS (trust 0.001), lr 0.01, weight decay 1e-6,
    10 warm-up epochs then cosine to 0. Gradient clipping is the Trainer's ``gradient_clip_val``."""

    def __init__(
        self,
        backbone: dict | None = None,
        d_model: int = 640,
        pooling: str = "multiscale",
        transformer: dict | None = None,
        mode: Literal["joint", "staged"] = "joint",
        stage: Loss | None = None,
        w_intra: float = 1.0,
        w_inter: float = 1.0,
        w_mask: float = 1.0,
        intra_clustering: Literal["swav", "deepcluster"] = "swav",
        inter_clustering: Literal["swav", "deepcluster"] = "deepcluster",
        intra_prototypes: int = 3000,
        intra_clusters: list[int] | None = None,
        inter_prototypes: int = 3000,
        inter_clusters: list[int] | None = None,
        proj_hidden_dim: int = 2048,
        intra_proj_dim: int = 128,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        kmeans_iterations: int = 10,
        freeze_prototypes_steps: int = 313,
        mask_ratio: float = 0.1,
        mask_loss: Literal["masked", "reference"] = "masked",
        optimizer: str = "lars",
        lr: float = 0.01,
        weight_decay: float = 1e-6,
        warmup_epochs: float = 10.0,
        min_lr: float = 0.0,
        **base,
    ):
        super().__init__(
            backbone=backbone,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            min_lr=min_lr,
            **base,
        )
        self.save_hyperparameters()
        self.weights = loss_weights(mode, stage, w_intra, w_inter, w_mask)
        self.volume_encoder = build_slice_stack(self.encoder, d_model, transformer, pooling)
        self._load_volume_encoder()
        self.mask_token = nn.Parameter(torch.randn(d_model) * 0.02)
        self.mask_head = nn.Linear(d_model, d_model)
        self.intra_projector = ProjectionHead(d_model, proj_hidden_dim, intra_proj_dim, layers=2)
        self.intra_prototypes = PrototypeHead(intra_proj_dim, intra_prototypes) if intra_clustering == "swav" else None
        self.inter_prototypes = PrototypeHead(d_model, inter_prototypes) if inter_clustering == "swav" else None
        self.memories = nn.ModuleDict()  # DeepCluster banks, sized from the training set in setup()
        self._val_volumes: list[torch.Tensor] = []
        self._freeze_what_is_not_trained()

    # -- the two networks ------------------------------------------------------------------------
    @property
    def f_inter(self) -> nn.Module:
        return self.stack.transformer

    @property
    def stack(self) -> SliceStack:
        network = self.volume_encoder.network
        if not isinstance(network, SliceStack):
            raise TypeError(f"volume_encoder should wrap a SliceStack, not {type(network).__name__}")
        return network

    def encoders(self) -> dict[str, nn.Module]:
        """``encoder``: f_intra, a plain 2D MONAI network; ``volume_encoder``: f_intra + projection +
        f_inter, volumes → Z (``medssl embed`` writes Z and the slice tokens; ``medssl export`` writes both)."""
        return {"encoder": self.encoder, "volume_encoder": self.volume_encoder}

    def slice_embeddings(self, volumes: torch.Tensor) -> torch.Tensor:
        """X ``[B, N, d_model]`` of a batch of volumes ``[B, C, N, H, W]``."""
        return self.stack.slice_embeddings(self.scale(volumes))

    def _trains_f_intra(self) -> bool:
        return any(p.requires_grad for p in self.encoder.parameters())

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """A stacks batch, or ``{"volumes": stacks, "images": two-view 2D images}``
        (:class:`~medssl.data.StacksAndImagesDataModule`), the images joining L_intra."""
        images = batch.get("images")
        batch = batch.get("volumes", batch)
        views, index = batch["views"][:2], batch["index"]
        tokens = [self.slice_embeddings(v) for v in views]  # separate passes: BatchNorm sees one view at a time
        losses: dict[str, torch.Tensor] = {}
        if "intra" in self.weights:
            losses["intra"] = self.intra_loss(tokens, index)
            if images is not None:
                image_loss = self.image_loss(images["views"][:2])
                self.log("train/intra_images", image_loss)
                losses["intra"] = (losses["intra"] + image_loss) / 2
        if "inter" in self.weights:
            volumes = [SliceStack.volume_embedding(self.f_inter(x)) for x in tokens]
            losses["inter"] = self.inter_loss(volumes, index)
        if "mask" in self.weights:
            losses["mask"] = self.mask_loss(tokens)
        total = torch.stack([self.weights[name] * value for name, value in losses.items()]).sum()
        for name, value in losses.items():
            self.log(f"train/{name}", value)
        self.log("train/loss", total, prog_bar=True)
        return total

    def intra_loss(self, tokens: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Cluster agreement of slice ``k`` of one view with slice ``k`` of the other."""
        n = tokens[0].shape[1]
        projections = [nn.functional.normalize(self.intra_projector(x.flatten(0, 1)), dim=1) for x in tokens]
        if self.intra_prototypes is None:
            slices = (index[:, None] * n + torch.arange(n, device=index.device)).flatten()
            return self._deepcluster("intra", slices, projections)
        return self._swav(self.intra_prototypes, projections)

    def image_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        """L_intra on 2D images (two views ``[B, C, H, W]`` each): f_intra's slice embedding of each, then
        the slices' SwAV head, so images and slices share one clustering."""
        if self.intra_prototypes is None:
            raise InputError("2D images join L_intra with intra_clustering: swav (a DeepCluster bank holds slices)")
        stack = self.stack
        embeddings = [
            stack.projection(pooled_slice_features(stack.slice_encoder, self.scale(v), stack.pooling)) for v in views
        ]
        return self._swav(
            self.intra_prototypes, [nn.functional.normalize(self.intra_projector(x), dim=1) for x in embeddings]
        )

    def inter_loss(self, volumes: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Cluster agreement of the two views' volume embeddings Z."""
        if self.inter_prototypes is None:
            return self._deepcluster("inter", index, volumes)
        return self._swav(self.inter_prototypes, volumes)

    def mask_loss(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Masked slice-embedding prediction, per view; the hidden slices differ between views."""
        h = self.hparams
        terms = []
        for x in tokens:
            mask = random_token_mask(x.shape[0], x.shape[1], h.mask_ratio).to(x.device)
            hidden = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
            predicted = self.mask_head(self.f_inter(hidden))
            terms.append(masked_embedding_mse(predicted, x.detach(), mask, h.mask_loss, h.mask_ratio))
        stacked = torch.stack(terms)
        return stacked.mean() if h.mask_loss == "masked" else stacked.sum()  # the code sums its two views

    def _swav(self, prototypes: PrototypeHead, embeddings: list[torch.Tensor]) -> torch.Tensor:
        h = self.hparams
        scores = [prototypes(z) for z in embeddings]
        codes = [sinkhorn_knopp(s.detach(), h.epsilon, h.sinkhorn_iterations) for s in scores]
        return swapped_prediction(scores, codes, h.temperature)

    def _deepcluster(self, kind: str, index: torch.Tensor, embeddings: list[torch.Tensor]) -> torch.Tensor:
        memory = self.memory(kind)
        loss = memory.loss(index, embeddings, self.hparams.temperature)
        memory.store(index, embeddings)
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        for prototypes in (self.intra_prototypes, self.inter_prototypes):
            if prototypes is not None:
                prototypes.normalize_()
        if not self._trains_f_intra():
            self.encoder.eval()  # frozen f_intra keeps its BatchNorm statistics

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_prototypes_steps:
            for prototypes in (self.intra_prototypes, self.inter_prototypes):
                if prototypes is not None:
                    prototypes.prototypes.weight.grad = None

    # -- DeepCluster-v2 memory banks -------------------------------------------------------------
    def memory(self, kind: str) -> ClusterMemory:
        if kind not in self.memories:
            raise RuntimeError(f"no {kind} memory bank: it is sized from the training set when fit starts")
        memory = self.memories[kind]
        if not isinstance(memory, ClusterMemory):
            raise TypeError(f"memories[{kind!r}] should be a ClusterMemory, not {type(memory).__name__}")
        return memory

    def _deepcluster_kinds(self) -> list[tuple[str, list[int]]]:
        h, kinds = self.hparams, []
        if "intra" in self.weights and h.intra_clustering == "deepcluster":
            kinds.append(("intra", list(h.intra_clusters or [3000, 3000, 3000])))
        if "inter" in self.weights and h.inter_clustering == "deepcluster":
            kinds.append(("inter", list(h.inter_clusters or [4, 4, 4])))
        return kinds

    def _build_memories(self, volumes: int, slices: int) -> None:
        h = self.hparams
        for kind, _ in self._deepcluster_kinds():
            size, dim = (volumes * slices, h.intra_proj_dim) if kind == "intra" else (volumes, h.d_model)
            self._add_memory(kind, size, dim)

    def _add_memory(self, kind: str, size: int, dim: int) -> None:
        """A bank of ``size`` rows of ``dim`` for the ``kind`` loss, unless it has one."""
        if kind not in self.memories:
            clusters = dict(self._deepcluster_kinds())[kind]
            self.memories[kind] = ClusterMemory(size, dim, clusters, views=2, iterations=self.hparams.kmeans_iterations)

    def setup(self, stage: str) -> None:
        """Size the DeepCluster banks from the training set: one row per volume (inter), per slice of a
        crop (intra)."""
        if stage != "fit" or not self._deepcluster_kinds():
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = stage_dataset(datamodule, "fit")
        if dataset is None:
            raise InputError("DeepCluster-v2 needs the training set's size: fit with a medssl DataModule")
        sample = self._views(datamodule, default_collate([dataset[0]]))
        self._build_memories(len(dataset), int(sample["views"][0].shape[2]))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Banks exist before the weights load (a model rebuilt from a checkpoint has had no setup)."""
        state = checkpoint.get("state_dict", {})
        for kind, _ in self._deepcluster_kinds():
            bank = state.get(f"memories.{kind}.bank")
            if bank is not None:
                self._add_memory(kind, int(bank.shape[1]), int(bank.shape[2]))

    def on_train_epoch_start(self) -> None:
        """DeepCluster-v2: fill the banks once before the first epoch, then at every epoch start merge
        them across ranks and re-cluster (the same seeded k-means on every rank)."""
        kinds = [kind for kind, _ in self._deepcluster_kinds()]
        if not kinds:
            return
        if not all(bool(self.memory(kind).filled.any()) for kind in kinds):
            self._fill_memories()
        for kind in kinds:
            memory = self.memory(kind)
            memory.synchronise()
            memory.cluster(seed=self.current_epoch)

    @torch.no_grad()
    def _fill_memories(self) -> None:
        """One pass over this rank's training data storing each sample's embeddings (DeepCluster-v2's
        ``init_memory``), in eval mode so BatchNorm statistics stay untouched."""
        datamodule = getattr(self.trainer, "datamodule", None)
        datamodule = getattr(datamodule, "volumes", datamodule)  # StacksAndImagesDataModule: its stacks
        loader = datamodule.train_dataloader() if datamodule is not None else self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("DeepCluster-v2 needs the training loader to fill its memory bank")
        was_training = self.training
        self.eval()
        for batch in loader:
            batch = self._views(datamodule, move_data_to_device(batch, self.device))
            index = batch["index"].to(self.device)
            tokens = [self.stack.slice_embeddings(self.scale(v.to(self.device))) for v in batch["views"][:2]]
            if "intra" in self.memories:
                n = tokens[0].shape[1]
                slices = (index[:, None] * n + torch.arange(n, device=self.device)).flatten()
                projections = [nn.functional.normalize(self.intra_projector(x.flatten(0, 1)), dim=1) for x in tokens]
                self.memory("intra").store(slices, projections)
            if "inter" in self.memories:
                volumes = [SliceStack.volume_embedding(self.f_inter(x)) for x in tokens]
                self.memory("inter").store(index, volumes)
        self.train(was_training)

    @staticmethod
    def _views(datamodule, batch: dict) -> dict:
        """A training batch with its views made, as the trainer's loop makes them (device views are
        made by the DataModule's ``on_after_batch_transfer``; CPU views come made)."""
        hook = getattr(datamodule, "on_after_batch_transfer", None)
        return hook(batch, 0) if hook is not None else batch

    # -- what a run trains --------------------------------------------------------------------------
    def _freeze_what_is_not_trained(self) -> None:
        """Parts no active loss reaches get ``requires_grad=False`` (DDP refuses unused parameters; the
        optimiser leaves them out). f_intra is frozen in the ``mask`` stage, as in the released code."""
        used: set[int] = set()

        def use(*modules: nn.Module | nn.Parameter | None) -> None:
            for m in modules:
                if isinstance(m, nn.Parameter):
                    used.add(id(m))
                elif m is not None:
                    used.update(id(p) for p in m.parameters())

        h = self.hparams
        stack = self.stack
        if "intra" in self.weights:
            use(stack.slice_encoder, stack.projection, self.intra_projector, self.intra_prototypes)
        if "inter" in self.weights:
            use(stack.slice_encoder, stack.projection, stack.transformer, self.inter_prototypes)
        if "mask" in self.weights:
            use(stack.projection, stack.transformer, self.mask_token, self.mask_head)
            if h.mode == "joint":
                use(stack.slice_encoder)
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in used)

    def _load_volume_encoder(self) -> None:
        """A staged run starts from the previous stage's checkpoint: f_intra always (``init_checkpoint``,
        done by the base class), and the projection and f_inter too when the file has this model's
        ``volume_encoder``."""
        path = self.hparams.get("init_checkpoint")
        if path is None or "volume_encoder" not in (load_checkpoint(path).get("medssl_encoders") or {}):
            return
        loaded = load_encoder_weights(self.volume_encoder, path, "volume_encoder")
        rank_zero_info(f"{type(self).__name__}: f_intra, projection and f_inter initialised from {loaded}")

    # -- monitors ------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Volumes (``[B, C, N, H, W]``): f_intra's features of every slice feed the usual monitors (as
        for the other methods on slices) and Z feeds ``val/volume_rankme``; 2D images as other methods."""
        images = batch["image"]
        if images.ndim != 5:
            return super().validation_step(batch, batch_idx)
        volumes = self.scale(images)
        slices = volumes.permute(0, 2, 1, 3, 4).flatten(0, 1)
        super().validation_step({"image": slices}, batch_idx)
        self._val_volumes.append(self.volume_encoder(volumes).detach().float().cpu())

    def on_validation_epoch_end(self) -> None:
        volumes, self._val_volumes = self._val_volumes, []
        if volumes and sum(len(z) for z in volumes) >= 2:
            self.log("val/volume_rankme", rankme(torch.cat(volumes)), sync_dist=True)
        super().on_validation_epoch_end()


def loss_weights(mode: str, stage: str | None, w_intra: float, w_inter: float, w_mask: float) -> dict[str, float]:
    """The losses a run optimises, with their weights: all three with non-zero weight in ``joint`` mode,
    the one of its ``stage`` in ``staged`` mode."""
    if mode == "joint":
        if stage is not None:
            raise ValueError(f"stage={stage!r} is for mode='staged'; joint training optimises all losses at once")
        weights = {"intra": w_intra, "inter": w_inter, "mask": w_mask}
        weights = {name: w for name, w in weights.items() if w != 0}
        if not weights:
            raise ValueError("all loss weights are 0: nothing to train")
        return weights
    if mode == "staged":
        if stage not in STAGES:
            raise ValueError(f"mode='staged' needs stage one of {STAGES}, got {stage!r}")
        return {stage: 1.0}
    raise ValueError(f"mode must be 'joint' or 'staged', got {mode!r}")
