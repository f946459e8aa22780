"""The encoder contract: a model names the networks it trains (``encoders()``), its checkpoints record
them, and export/embed find each one by name rather than by a naming convention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medssl.errors import InputError
from medssl.export import encoder_source, export_encoder, load_encoder
from medssl.methods.base import MedsslModule
from medssl.methods.ins import INS
from medssl.nn.backbones import build_encoder

BACKBONE = {"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.25}


class StudentTeacher(MedsslModule):
    """Two medssl encoders (as a student and its EMA teacher) and one plain network."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student = build_encoder(**BACKBONE)
        self.heads = nn.ModuleDict({"teacher": build_encoder(**BACKBONE)})
        self.mixer = nn.Linear(4, 4)

    def encoders(self) -> dict[str, nn.Module]:
        return {"encoder": self.student, "teacher": self.heads["teacher"], "mixer": self.mixer}


def save_checkpoint(model: MedsslModule, path: Path, drop_contract: bool = False) -> Path:
    """What Lightning writes, reduced to the parts export reads."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": {"backbone": BACKBONE}, "epoch": 3}
    model.on_save_checkpoint(checkpoint)
    if drop_contract:
        del checkpoint["medssl_encoders"]
    torch.save(checkpoint, path)
    return path


def test_checkpoints_record_each_encoder_with_its_prefix_and_config(tmp_path):
    model = StudentTeacher()
    records = model.encoder_records()
    assert records["encoder"]["prefix"] == "student.network."
    assert records["teacher"]["prefix"] == "heads.teacher.network."
    assert records["teacher"]["config"]["name"] == "resnet18"
    assert records["mixer"] == {"prefix": "mixer.", "class": "torch.nn.modules.linear.Linear"}


def test_export_takes_the_named_encoder_not_a_naming_convention(tmp_path):
    model = StudentTeacher()
    with torch.no_grad():
        model.heads["teacher"].network.conv1.weight.mul_(-1.0)  # tell the two apart
    path = save_checkpoint(model, tmp_path / "model.ckpt")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for name, module in (("encoder", model.student), ("teacher", model.heads["teacher"])):
            torch.testing.assert_close(load_encoder(path, name)(images), module.eval()(images))
    exported = torch.load(export_encoder(path, tmp_path / "teacher.pt", name="teacher"), weights_only=True)
    torch.testing.assert_close(exported["state_dict"]["conv1.weight"], model.heads["teacher"].network.conv1.weight)
    assert exported["source"]["encoder"] == "teacher"


def test_a_missing_or_non_backbone_encoder_is_refused_by_name(tmp_path):
    path = save_checkpoint(StudentTeacher(), tmp_path / "model.ckpt")
    with pytest.raises(InputError, match=r"no encoder 'decoder'; the model trains \['encoder', 'mixer', 'teacher'\]"):
        encoder_source(path, "decoder")
    with pytest.raises(InputError, match="'mixer' is a torch.nn.modules.linear.Linear, not a medssl backbone"):
        encoder_source(path, "mixer")


def test_checkpoints_from_before_the_contract_still_export(tmp_path):
    class OneEncoder(MedsslModule):
        def __init__(self):
            super().__init__()
            self.encoder = build_encoder(**BACKBONE)

    model = OneEncoder()
    path = save_checkpoint(model, tmp_path / "old.ckpt", drop_contract=True)
    state = encoder_source(path)["state_dict"]
    torch.testing.assert_close(state["conv1.weight"], model.encoder.network.conv1.weight)
    with pytest.raises(InputError, match="predates named encoders"):
        encoder_source(path, "teacher")


def test_encoders_must_be_submodules():
    class Stray(MedsslModule):
        def encoders(self) -> dict[str, nn.Module]:
            return {"encoder": nn.Linear(2, 2)}

    with pytest.raises(ValueError, match=r"encoders\(\)\['encoder'\] is not a submodule"):
        Stray().encoder_records()


def test_ins_exports_its_pixel_encoder(tmp_path):
    model = INS(backbone=BACKBONE, queue_size=8, num_instances=4)
    records = model.encoder_records()
    assert list(records) == ["encoder"] and records["encoder"]["prefix"] == "encoder.network."


def test_medssl_export_takes_an_encoder_by_name(tmp_path, capsys):
    from medssl.cli import main

    model = StudentTeacher()
    path = save_checkpoint(model, tmp_path / "model.ckpt")
    assert main(["export", str(path), "--out", str(tmp_path / "teacher.pt"), "--encoder", "teacher"]) == 0
    exported = torch.load(tmp_path / "teacher.pt", weights_only=True)
    torch.testing.assert_close(exported["state_dict"]["conv1.weight"], model.heads["teacher"].network.conv1.weight)
    assert main(["export", str(path), "--out", str(tmp_path / "mixer.pt"), "--encoder", "mixer"]) == 2
    assert "not a medssl backbone" in capsys.readouterr().err
