"""Configs and the LightningCLI without training: every config composes the shared Trainer fragment
from any working directory, names its DataModule by the short class path, and ``medssl fit`` turns
Lightning's distributed sampler off for medssl DataModules whatever the config or command line says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import medssl.data
import medssl.data.datamodules
from medssl.cli import run_lightning

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    [
        *(ROOT / "configs" / "pretrain").glob("*.yaml"),
        *(ROOT / "configs" / "mil").glob("*.yaml"),
        *(ROOT / "configs" / "finetune").glob("**/*.yaml"),
    ]
)
FRAGMENT = yaml.safe_load((ROOT / "configs" / "trainer" / "default.yaml").read_text())["trainer"]
BORING = "lightning.pytorch.demos.boring_classes"


def printed_config(config: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        run_lightning(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs").with_suffix("")) for c in CONFIGS])
def test_config_composes_the_trainer_fragment_from_any_directory(config, capsys, monkeypatch, tmp_path):
    """The fragment is found relative to the config, not to the working directory; the config's own
    trainer.* keys are kept beside it (a nested `trainer:` block would silently drop the fragment)."""
    raw = yaml.safe_load(config.read_text())
    own = {**raw.get("trainer", {}), **{k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("trainer.")}}
    assert {"max_epochs", "default_root_dir"} <= own.keys() and not own.keys() & FRAGMENT.keys()
    printed = []
    for cwd, path in ((ROOT, config.relative_to(ROOT)), (tmp_path, Path(os.path.relpath(config, tmp_path)))):
        monkeypatch.chdir(cwd)
        printed.append(printed_config(path, capsys))
    assert printed[0] == printed[1]
    trainer = printed[0]["trainer"]
    assert {k: trainer[k] for k in FRAGMENT} == FRAGMENT
    callbacks = own.pop("callbacks", [])  # printed with every default filled in: compare what the config says
    assert {k: trainer[k] for k in own} == own
    for mine, shown in zip(callbacks, trainer.get("callbacks") or [], strict=True):
        assert shown["class_path"] == mine["class_path"]
        assert {k: shown["init_args"][k] for k in mine.get("init_args", {})} == mine.get("init_args", {})
    assert printed[0]["data"]["class_path"] == "medssl.data." + printed[0]["data"]["class_path"].rsplit(".", 1)[1]


def test_configs_name_datamodules_by_the_short_path():
    names = ("TileDataModule", "VolumeDataModule", "BagDataModule", "InstanceDataModule", "ClassificationDataModule")
    for name in (*names, "CacheDataModule"):
        cls = getattr(medssl.data, name)
        assert cls is getattr(medssl.data.datamodules, name) and cls.uses_medssl_sampler
    for config in CONFIGS:
        class_path = yaml.safe_load(config.read_text())["data"]["class_path"]
        assert class_path.startswith("medssl.data.") and class_path.count(".") == 2, config


def test_medssl_data_does_not_import_lightning_until_a_datamodule_is_used():
    code = (
        "import sys, medssl.data.transforms; assert 'lightning' not in sys.modules; "
        "from medssl.data import TileDataModule; assert 'lightning' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("flag", [["--trainer.use_distributed_sampler", "true"], []], ids=["set-true", "absent"])
@pytest.mark.parametrize("data", ["medssl.data.TileDataModule", "medssl.data.datamodules.BagDataModule"])
def test_cli_turns_off_lightnings_sampler_for_medssl_datamodules(data, flag, tmp_path):
    cli = run_lightning(
        [
            "--model",
            f"{BORING}.BoringModel",
            "--data",
            data,
            "--data.init_args.cache",
            str(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path),
            *(["--data.init_args.positive_class", "tumor"] if "Bag" in data else []),
            *flag,
        ],
        run=False,
    )
    assert cli.trainer._accelerator_connector.use_distributed_sampler is False
    assert cli.config.trainer.use_distributed_sampler is False  # what the run's saved config.yaml records


def test_cli_leaves_other_datamodules_to_lightning(tmp_path):
    cli = run_lightning(
        [
            "--model",
            f"{BORING}.BoringModel",
            "--data",
            f"{BORING}.BoringDataModule",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    assert cli.trainer._accelerator_connector.use_distributed_sampler is True
