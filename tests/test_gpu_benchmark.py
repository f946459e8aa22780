"""benchmarks/gpu.sh's driver works before a GPU is lent: it runs at toy sizes on a CPU with the GPU's
switches (device views, bf16, channels-last), and every config's arguments at the GPU's sizes are ones
``medssl fit`` accepts. The full set of configs runs only in gpu.sh itself (too slow for the suite)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from medssl.cli import run_lightning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_gpu  # noqa: E402  # pyright: ignore[reportMissingImports]  (benchmarks/ is a folder of scripts)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

#: one config per kind of synthetic data: tiles and slice stacks (device views), patch features (none)
RUN = ("simclr_tiles", "joint_2d3d", "madeleine")
BROKEN = "barlow_twins_tiles"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """The driver's work folder with its toy caches built (the run finds and keeps them)."""
    folder = tmp_path_factory.mktemp("bench-gpu")
    kinds = {bench_gpu.config_kind(c) for c in bench_gpu.select(None)}
    bench_gpu.build_caches(kinds, folder / bench_gpu.TOY.name, bench_gpu.TOY, workers=1)
    return folder


def test_toy_run_prints_one_row_of_figures_per_config_and_writes_json(work_dir, tmp_path, capsys, monkeypatch):
    """Two configs run; a third, given a misspelt key here, fails alone: its row says why, the run goes on."""
    arguments = bench_gpu.fit_arguments

    def misspelt_for_one(config, *rest):
        return arguments(config, *rest) + (["--model.init_args.temprature", "0.2"] if config.stem == BROKEN else [])

    monkeypatch.setattr(bench_gpu, "fit_arguments", misspelt_for_one)
    report = bench_gpu.main(
        [
            *("--toy", "--configs", BROKEN, *RUN, "--steps", "2", "--warmup", "1", "--precision", "bf16-mixed"),
            *("--work-dir", str(work_dir), "--json", str(tmp_path / "out.json")),
        ]
    )
    rows = {row["config"]: row for row in report["rows"]}
    assert list(rows) == [BROKEN, *RUN]
    assert "configuration refused" in rows.pop(BROKEN)["error"]
    for name, row in rows.items():
        assert "error" not in row, f"{name}: {row.get('error')}"
        assert row["steps"] + row["epoch_starts"] == 2 and row["samples_per_s"] > 0  # toy epochs may be short
        assert row["step_ms"] == pytest.approx(row["data_ms"] + row["views_ms"] + row["compute_ms"])
        assert 0 <= row["stall"] <= 1 and row["peak_mib"] is None  # no GPU here
    assert rows["simclr_tiles"]["batch"] == 8 and rows["simclr_tiles"]["views_ms"] > 0  # views made in the hook
    assert rows["joint_2d3d"]["batch"] == 2 and rows["joint_2d3d"]["views_ms"] > 0
    madeleine = rows["madeleine"]  # features: the hook has no views to make
    assert madeleine["batch"] == 2 and madeleine["views_ms"] < madeleine["compute_ms"] / 10
    assert report["switches"] == {
        "views_on": "device",
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": False,
    }
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == report["rows"]
    table = capsys.readouterr().out
    assert all(any(line.startswith(name) for line in table.splitlines()) for name in (BROKEN, *RUN))


@pytest.mark.parametrize("scale", [bench_gpu.TOY, bench_gpu.REALISTIC], ids=["toy", "realistic"])
def test_every_config_takes_the_benchmark_arguments(scale, work_dir, tmp_path):
    """What gpu.sh passes for each config builds the model, DataModule and Trainer (on the toy caches: a
    volume DataModule reads the stored dtype when it is built)."""
    caches = bench_gpu.build_caches({"tiles", "stacks", "features"}, work_dir / bench_gpu.TOY.name, bench_gpu.TOY, 1)
    options = argparse.Namespace(
        views_on="device", precision="bf16-mixed", channels_last=True, compile=False, cpu=True, warmup=1, steps=1
    )
    configs = bench_gpu.select(None)
    assert len(configs) == len(list(bench_gpu.CONFIGS.glob("*.yaml")))
    for config in configs:
        arguments = bench_gpu.fit_arguments(config, scale, caches, options, tmp_path / "runs")
        cli = run_lightning(arguments[1:], run=False)
        kind = bench_gpu.config_kind(config)
        data = cli.datamodule
        if kind != "features":  # patch features have no views
            assert data.views_on == "device"
        if kind == "pairs":
            assert list(data.spatial_size) == list(scale.crop)
        if kind == "stacks":
            assert list(data.spatial_size) == list(scale.stack)
        if kind == "tiles":
            assert data.view_size == scale.view
        names = {type(c).__name__ for c in cli.trainer.callbacks}  # pyright: ignore[reportAttributeAccessIssue]
        assert {"EncoderSpeedups", "StepTimer"} <= names and "ModelCheckpoint" not in names, config.stem
        assert cli.trainer.max_steps == 2 and cli.trainer.precision == "bf16-mixed"
