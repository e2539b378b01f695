"""Architectures register themselves; `model.architecture` + `model.args` choose one; configs and checkpoints from
before `args` (one section per architecture) load through one shim."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from recsys_mtl.config.loader import ConfigError, from_dict
from recsys_mtl.config.train import TrainConfig
from recsys_mtl.models import MultiTaskModel
from recsys_mtl.models.architectures import architectures, register_architecture
from recsys_mtl.models.architectures.registry import _REGISTRY
from recsys_mtl.train.checkpoint import _signature_diff, model_signature, upgrade_signature

from .batches import random_batch, tiny_spec

DATA = {"train_path": "x", "spec": "y"}


def model_config(**model):
    return from_dict(TrainConfig, {"data": DATA, "model": model}, "cfg.yaml")


def test_a_registered_architecture_is_chosen_by_name_with_its_args():
    @register_architecture("test_linear")
    class Linear(nn.Module):
        def __init__(self, in_dim: int, num_tasks: int, *, width: int = 4, dropout: float = 0.0):
            super().__init__()
            self.num_tasks, self.out_dim, self.dropout = num_tasks, width, dropout
            self.layer = nn.Linear(in_dim, width)

        def forward(self, x):
            return self.layer(x).unsqueeze(1).expand(-1, self.num_tasks, -1)

    try:
        spec = tiny_spec()
        config = model_config(architecture="test_linear", args={"width": 6}, dropout=0.25)
        model = MultiTaskModel(spec, config.model)
        assert isinstance(model.architecture, Linear) and model.architecture.out_dim == 6
        assert model.architecture.dropout == 0.25  # the model's dropout, unless args give the architecture's own
        batch = random_batch(spec, 8, seed=0)
        assert model(batch.dense, batch.sparse).shape == (8, spec.num_tasks)
        with pytest.raises(ConfigError, match=r"cfg.yaml: model.args: architecture 'test_linear': unknown argument\(s\) "
                                              r"depth; allowed: width, dropout"):
            model_config(architecture="test_linear", args={"depth": 2})
    finally:
        _REGISTRY.pop("test_linear")
    assert "test_linear" not in architectures()


def test_args_values_the_architecture_refuses_are_a_config_error_naming_model_args():
    config = model_config(architecture="mmoe", args={"num_experts": 0})
    with pytest.raises(ConfigError, match=r"model.args: cannot build 'mmoe' with .*num_experts must be >= 1, got 0"):
        MultiTaskModel(tiny_spec(), config.model)


@pytest.mark.parametrize("architecture, old_section, args", [
    ("mmoe", {"num_experts": 3, "expert_hidden": [16]}, {"num_experts": 3, "expert_hidden": [16]}),
    ("ple", {"levels": 1, "shared_experts": 1, "task_experts": 2, "expert_hidden": [8]},
     {"levels": 1, "shared_experts": 1, "task_experts": 2, "expert_hidden": [8]}),
    ("shared_bottom", {"hidden": [12]}, {"hidden": [12]}),
])
def test_an_old_config_section_and_the_same_args_build_the_same_model_with_the_same_signature(architecture,
                                                                                              old_section, args):
    spec = tiny_spec()
    old = model_config(architecture=architecture, **{architecture: old_section})
    new = model_config(architecture=architecture, args=args)
    torch.manual_seed(0)
    a = MultiTaskModel(spec, old.model, seed=1)
    b = MultiTaskModel(spec, new.model, seed=1)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert model_signature(spec, old) == model_signature(spec, new)
    others = set(architectures()) - {architecture}
    assert architecture in model_signature(spec, new)["model"] and not others & set(model_signature(spec, new)["model"])


def test_a_signature_saved_with_every_architectures_section_matches_the_chosen_ones():
    spec = tiny_spec()
    config = model_config(architecture="mmoe", mmoe={"num_experts": 3})
    current = json.loads(json.dumps(model_signature(spec, config)))
    old = json.loads(json.dumps(current))  # what a checkpoint made before `model.args` saved
    old["model"].update(shared_bottom={"hidden": [256, 128]}, ple={"levels": 2, "shared_experts": 2,
                                                                   "task_experts": 1, "expert_hidden": [64]})
    assert _signature_diff(old, current) != []
    assert _signature_diff(upgrade_signature(old), current) == []
    other = json.loads(json.dumps(model_signature(spec, model_config(architecture="mmoe", args={"num_experts": 5}))))
    assert _signature_diff(upgrade_signature(old), other) == [
        "model.mmoe.num_experts: checkpoint has 3, this config has 5"]


def test_a_checkpoint_written_before_model_args_resumes_and_loads(tmp_path):
    from recsys_mtl.evaluate.loading import load_model
    from recsys_mtl.train import Trainer

    from ..train.helpers import tiny_config
    from .batches import ListSource, rank_batches

    spec = tiny_spec()
    batches = rank_batches(spec, 2, 16, 1, 0)
    config = tiny_config(tmp_path / "out", train={"epochs": 1}, tracking={"enabled": False})
    Trainer(config, spec=spec, train_data=ListSource(batches)).fit()
    checkpoint = Trainer(config, spec=spec, train_data=ListSource(batches)).checkpoints.latest()
    signature = json.loads((checkpoint / "model.json").read_text())
    signature["model"].update(shared_bottom={"hidden": [256, 128]},  # every section, as checkpoints had them
                              ple={"levels": 2, "shared_experts": 2, "task_experts": 1, "expert_hidden": [64]})
    (checkpoint / "model.json").write_text(json.dumps(signature))
    longer = tiny_config(tmp_path / "out", train={"epochs": 2}, tracking={"enabled": False})
    assert Trainer(longer, spec=spec, train_data=ListSource(batches)).fit().trained_steps == 2  # resumed at step 2
    assert load_model(checkpoint).step == 2
