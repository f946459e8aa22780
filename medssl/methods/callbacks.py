"""Lightning callbacks that medssl's methods share.

:class:`RankMeCheckpoint` chooses a checkpoint without labels: after a warm-up, it keeps the epoch whose
training embeddings have the highest RankMe (Garrido et al., ICML 2023, the smooth effective rank), the
rule MADELEINE (Jaume et al., ECCV 2024) uses for its slide encoder. Pretraining usually has no labelled
validation set, and the last epoch is not always the best one; RankMe tracks downstream accuracy well
within one method's run.

:class:`EncoderSpeedups` and :class:`StepTimer` are for feeding an accelerator: the first puts every
model's encoders in the memory layout fast convolutions want (and optionally compiles them), the second
says where each training step's time goes (waiting for the loader, making device views, computing).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from medssl.eval import rankme
from medssl.methods.base import MedsslModule


def chosen_epoch(history: Sequence[tuple[int, float]], warmup_epochs: int) -> int | None:
    """The epoch with the highest RankMe among those at index ≥ ``warmup_epochs`` (0-based epochs, so
    ``warmup_epochs=20`` considers epochs from the 21st on, "after epoch 20"); the earliest on ties;
    None before any qualifies."""
    eligible = [(value, -epoch) for epoch, value in history if epoch >= warmup_epochs]
    return -max(eligible)[1] if eligible else None


class RankMeCheckpoint(pl.Callback):
    """Save ``dirpath/filename`` at the end of every epoch whose RankMe beats all earlier eligible epochs.

    The embeddings are what the model's ``training_step`` returns under ``key`` (a ``[n, d]`` tensor per
    step; :class:`~medssl.methods.madeleine.Madeleine` returns its H&E slide embeddings), gathered from
    every rank, so all ranks agree. The epoch's value is logged as ``train/rankme``; ``best_epoch`` and
    ``best_rankme`` say what was kept, and survive a resume (callback state is in the checkpoint).
    ``dirpath`` defaults to the run's ``checkpoints`` folder."""

    def __init__(
        self,
        warmup_epochs: int = 20,
        dirpath: str | None = None,
        filename: str = "rankme-best.ckpt",
        key: str = "embeddings",
    ):
        self.warmup_epochs, self.dirpath, self.filename, self.key = warmup_epochs, dirpath, filename, key
        self.history: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_rankme: float | None = None
        self.best_path: Path | None = None
        self._epoch: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and isinstance(outputs.get(self.key), torch.Tensor):
            self._epoch.append(outputs[self.key].detach().float())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        embeddings = _gather_rows(trainer, self._epoch)
        self._epoch = []
        if embeddings is None or len(embeddings) < 2:
            return
        value, epoch = rankme(embeddings), trainer.current_epoch
        pl_module.log("train/rankme", value, rank_zero_only=True)
        self.history.append((epoch, value))
        if chosen_epoch(self.history, self.warmup_epochs) == epoch:
            self.best_epoch, self.best_rankme = epoch, value
            folder = (
                Path(self.dirpath)
                if self.dirpath
                else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
            )
            self.best_path = folder / self.filename
            trainer.save_checkpoint(self.best_path)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "best_epoch": self.best_epoch, "best_rankme": self.best_rankme}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(e), float(v)) for e, v in state_dict.get("history", [])]
        self.best_epoch, self.best_rankme = state_dict.get("best_epoch"), state_dict.get("best_rankme")


def _gather_rows(trainer: pl.Trainer, chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """This epoch's rows from every rank (ranks may hold different counts: padded to the largest)."""
    local = torch.cat(chunks) if chunks else None
    if trainer.world_size == 1:
        return local
    width = torch.tensor([0 if local is None else local.shape[1]], device=trainer.strategy.root_device)
    count = torch.tensor([0 if local is None else local.shape[0]], device=width.device)
    counts = trainer.strategy.all_gather(count).flatten()
    dim = int(trainer.strategy.all_gather(width).max())
    if dim == 0:
        return None
    padded = torch.zeros(int(counts.max()), dim, device=width.device)
    if local is not None:
        padded[: len(local)] = local.to(width.device)
    every = trainer.strategy.all_gather(padded)  # [world, max, dim]
    return torch.cat([every[r, : int(n)] for r, n in enumerate(counts.tolist())]).cpu()


# -- feeding an accelerator -------------------------------------------------------------------------------
#: the memory layout fast convolutions want, by the rank of a convolution's weight (2D: 4, 3D: 5)
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
CONVOLUTIONS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def to_channels_last(network: nn.Module) -> int:
    """Put every 2D/3D convolution's weights of ``network`` in channels-last layout
    (``torch.channels_last`` / ``torch.channels_last_3d``), in place; return how many modules changed.

    Only convolutions: linear layers, norms and attention have no channels-last form. Inputs need no
    conversion: cuDNN and oneDNN convolutions follow their weight's layout, so the first one's output is
    channels-last and the layers after it keep it (converting the input would cost one more copy). The
    parameters stay the same objects (an optimiser built before keeps them) and their values and
    ``state_dict`` keys do not change, so checkpoints load either way."""
    changed = 0
    for module in network.modules():
        if isinstance(module, CONVOLUTIONS):
            layout = CHANNELS_LAST[module.weight.dim()]
            if not module.weight.is_contiguous(memory_format=layout):
                module.to(memory_format=layout)  # pyright: ignore[reportCallIssue]  (nn.Module.to documents it)
                changed += 1
    return changed


def unique_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """``modules`` without repeats (a model may name one network twice), in order."""
    seen: dict[int, nn.Module] = {}
    for module in modules:
        seen.setdefault(id(module), module)
    return list(seen.values())


class EncoderSpeedups(pl.Callback):
    """Speed switches for the networks a model names in ``encoders()`` (every medssl method does), set
    from a config with no change to the method::

        trainer.callbacks:
          - class_path: medssl.methods.callbacks.EncoderSpeedups
            init_args: {channels_last: true, compile: false}

    or on the command line ``--trainer.callbacks+=medssl.methods.callbacks.EncoderSpeedups``. bf16 is
    Lightning's own switch, ``--trainer.precision bf16-mixed``.

    ``channels_last``: convolution weights in channels-last layout (:func:`to_channels_last`), what tensor
    cores want for 2D and 3D convolutions under bf16/fp16; transformers are left as they are.
    ``compile``: ``module.compile(backend=compile_backend, mode=compile_mode)`` **in place**, so the
    module, its parameters and its ``state_dict`` keys stay what they were: checkpoints, ``medssl export``
    and ``medssl embed`` see no difference. ``"inductor"`` generates kernels (needs a C++/Triton toolchain,
    and the first steps are slow while it compiles); ``"eager"`` and ``"aot_eager"`` only trace, to check
    that a model compiles. Both apply in ``setup``, before the strategy moves the model to its device
    (``.to(device)`` keeps the layout) and wraps it for DDP. Networks a method copies on its own and does
    not name (a momentum encoder that is not in ``encoders()``) keep the default layout: correct, only
    slower."""

    def __init__(
        self,
        channels_last: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
    ):
        self.channels_last, self.compile = channels_last, compile
        self.compile_backend, self.compile_mode = compile_backend, compile_mode
        self._compiled: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, MedsslModule):
            raise TypeError(f"EncoderSpeedups: {type(pl_module).__name__} is not a medssl model, with encoders()")
        for network in unique_modules(pl_module.encoders().values()):
            if self.channels_last:
                to_channels_last(network)
            if self.compile and id(network) not in self._compiled:
                network.compile(backend=self.compile_backend, mode=self.compile_mode)
                self._compiled.add(id(network))


@dataclass(frozen=True)
class StepTime:
    """Where one training step's time went, in seconds: ``data``, waiting for its batch (the loader and
    the copy to the device, from the end of the step before, or from the epoch's start for an epoch's
    ``first`` step, which so includes the model's epoch-start work and the loader's restart); ``views``,
    the DataModule's ``on_after_batch_transfer`` (device views); ``compute``, the rest until the step
    ended (forward, backward, optimiser). ``samples``: rows of the batch."""

    data: float
    views: float
    compute: float
    samples: int
    first: bool = False

    @property
    def total(self) -> float:
        return self.data + self.views + self.compute


class _HostClock:
    """Marks on the host's clock; a span is complete as soon as it is marked."""

    def mark(self) -> Any:
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        return end - start

    def done(self, mark: Any) -> bool:
        return True


class _CudaClock:
    """Marks on the GPU's timeline (CUDA events), read once the GPU has passed them, so marking never
    waits for the GPU and the spans say what the GPU did: a gap before a step's views is the GPU idle
    (or copying the batch in) while the host fetched the batch, i.e. a loader stall."""

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3

    def done(self, mark: Any) -> bool:
        return mark.query()


def batch_rows(batch: Any) -> int:
    """Samples in a collated batch: the length of its first tensor (depth first)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        rows = batch_rows(value)
        if rows:
            return rows
    return 0


class StepTimer(pl.Callback):
    """Where training steps' time goes: waiting for the loader, making device views, computing
    (:class:`StepTime` per step, in ``steps``). On CUDA the marks are CUDA events (the GPU's timeline, no
    synchronisation in the loop); on a CPU the host's clock. :meth:`summary` gives the means over the steps
    after ``skip`` warm-up steps (and peak GPU memory on CUDA); at the end of training it is printed
    (``report``). Views are timed by wrapping the DataModule's ``on_after_batch_transfer`` (the model's if
    the DataModule has none) for the fit; everything else from the callback hooks. Usage:
    ``--trainer.callbacks+=medssl.methods.callbacks.StepTimer``; ``benchmarks/bench_gpu.py`` reads it."""

    def __init__(self, skip: int = 5, report: bool = True):
        self.skip, self.report = skip, report
        self.steps: list[StepTime] = []
        self._clock: _HostClock | _CudaClock = _HostClock()
        self._pending: list[tuple[Any, ...]] = []
        self._previous: Any = None
        self._views: tuple[Any, Any] | None = None
        self._start: Any = None
        self._rows, self._first = 0, False
        self._wrapped: tuple[Any, Any] | None = None
        self._peak_mib: float | None = None

    # -- the views hook -----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._wrapped is not None:
            return
        from lightning.pytorch.utilities.model_helpers import is_overridden

        owner = getattr(trainer, "datamodule", None)
        if owner is None or not is_overridden("on_after_batch_transfer", owner, pl.LightningDataModule):
            owner = pl_module
        original = owner.on_after_batch_transfer

        def timed(batch: Any, dataloader_idx: int) -> Any:
            if not trainer.training:
                return original(batch, dataloader_idx)
            start = self._clock.mark()
            batch = original(batch, dataloader_idx)
            self._views = (start, self._clock.mark())
            return batch

        object.__setattr__(owner, "on_after_batch_transfer", timed)  # an instance attribute shadows the method
        self._wrapped = (owner, original)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._wrapped is not None:
            owner, _ = self._wrapped
            object.__delattr__(owner, "on_after_batch_transfer")
            self._wrapped = None

    # -- the steps ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock = _CudaClock() if pl_module.device.type == "cuda" else _HostClock()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous, self._views = self._clock.mark(), None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        self._start, self._rows, self._first = self._clock.mark(), batch_rows(batch), batch_idx == 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        end = self._clock.mark()
        views = self._views or (self._start, self._start)
        self._pending.append((self._previous, *views, end, self._rows, self._first))
        self._previous, self._views = end, None
        self._resolve()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            self._peak_mib = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        self._resolve()
        if self.report and self.steps:
            rank_zero_info(f"StepTimer: {self.describe()}")

    def _resolve(self) -> None:
        """Turn the marks of finished steps into :class:`StepTime` s (at once on the host; on CUDA once
        the GPU has passed a step's last event), so pending marks never pile up."""
        while self._pending and self._clock.done(self._pending[0][3]):
            previous, views_start, views_end, end, rows, first = self._pending.pop(0)
            span = self._clock.seconds
            parts = span(previous, views_start), span(views_start, views_end), span(views_end, end)
            self.steps.append(StepTime(*parts, samples=rows, first=first))

    # -- the figures --------------------------------------------------------------------------------------
    def summary(self, skip: int | None = None) -> dict[str, Any]:
        """Means over the steady steps after ``skip`` (default: the callback's ``skip``, fewer if the run
        was shorter): samples/s, ms per step in each part, the share of the step spent waiting for data
        (``stall``) and making views, and the peak GPU memory in MiB (None off CUDA). Steady: steps that
        do not begin an epoch (whose wait holds the loader's restart and the model's epoch-start work),
        unless all do (epochs of one batch); ``epoch_starts`` says how many were left out and
        ``epoch_start_ms`` what they took on average."""
        skip = self.skip if skip is None else skip
        timed = self.steps[min(skip, max(0, len(self.steps) - 1)) :]
        if not timed:
            return {"steps": 0}
        steps = [s for s in timed if not s.first] or timed
        starts = [] if steps is timed else [s for s in timed if s.first]
        total = sum(s.total for s in steps)

        def mean_ms(part: str) -> float:
            return 1e3 * statistics.fmean(getattr(s, part) for s in steps)

        return {
            "steps": len(steps),
            "samples_per_s": sum(s.samples for s in steps) / total if total > 0 else float("inf"),
            "batch": steps[-1].samples,
            "step_ms": 1e3 * total / len(steps),
            "data_ms": mean_ms("data"),
            "views_ms": mean_ms("views"),
            "compute_ms": mean_ms("compute"),
            "stall": sum(s.data for s in steps) / total if total > 0 else 0.0,
            "views_share": sum(s.views for s in steps) / total if total > 0 else 0.0,
            "epoch_starts": len(starts),
            "epoch_start_ms": 1e3 * statistics.fmean(s.total for s in starts) if starts else None,
            "peak_mib": self._peak_mib,
        }

    def describe(self) -> str:
        s = self.summary()
        if not s["steps"]:
            return "no steps timed"
        peak = f", peak GPU memory {s['peak_mib']:.0f} MiB" if s["peak_mib"] is not None else ""
        return (
            f"{s['samples_per_s']:.1f} samples/s over {s['steps']} steps; per step {s['step_ms']:.1f} ms = data "
            f"{s['data_ms']:.1f} + views {s['views_ms']:.1f} + compute {s['compute_ms']:.1f}; loader stall "
            f"{100 * s['stall']:.1f} %{peak}"
        )
