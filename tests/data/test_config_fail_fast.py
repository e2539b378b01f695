"""A training config's problems all at once, paths relative to the config file, and weighting args that follow
their method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from recsys_mtl.config import ConfigError
from recsys_mtl.config.train import DataConfig, TrainConfig, TrainSection

REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_problem_of_a_config_file_is_reported_in_one_error(tmp_path):
    path = write_config(tmp_path, {
        "data": {"train_path": "d", "spec": "s.yaml", "batch_size": -3, "shufle": True},
        "optim": {"dense": {"lr": "fast"}},
        "train": {"epochs": 0, "tsk_epochs": {}},
    })
    with pytest.raises(ConfigError) as err:
        TrainConfig.load(path)
    lines = str(err.value).splitlines()
    assert lines[0] == "5 problems:"

    def keys(cls) -> str:
        return ", ".join(sorted(f.name for f in dataclasses.fields(cls)))

    assert [line.strip() for line in lines[1:]] == [
        f"{path}: data.shufle: unknown key (did you mean 'shuffle'?); allowed keys: {keys(DataConfig)}",
        f"{path}: data.batch_size: must be > 0, got -3",
        f"{path}: optim.dense.lr: expected a number, got 'fast' (str)",
        f"{path}: train.tsk_epochs: unknown key (did you mean 'task_epochs'?); allowed keys: {keys(TrainSection)}",
        f"{path}: train.epochs: must be > 0, got 0",
    ]


def test_a_single_problem_stays_one_line(tmp_path):
    path = write_config(tmp_path, {"data": {"train_path": "d", "spec": "s.yaml", "batch_size": 0}})
    with pytest.raises(ConfigError, match=r"^\S+run.yaml: data.batch_size: must be > 0, got 0$"):
        TrainConfig.load(path)


def test_paths_in_a_config_file_are_relative_to_it_and_those_of_set_to_the_working_directory(tmp_path, monkeypatch):
    path = write_config(tmp_path / "project" / "configs", {
        "data": {"train_path": "../data/train", "spec": "../data/_feature_spec.yaml", "eval_path": "s3://bucket/eval"},
        "train": {"output_dir": "../runs/x", "checkpoint": {"dir": "/abs/ckpts"}},
    })
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.load(path)
    project = tmp_path / "project"
    assert config.data.train_path == str(project / "data" / "train")
    assert config.data.spec == str(project / "data" / "_feature_spec.yaml")
    assert config.data.eval_path == "s3://bucket/eval"  # a URI is not a local path
    assert config.train.output_dir == str(project / "runs" / "x")
    assert config.train.checkpoint.dir == "/abs/ckpts"

    overridden = TrainConfig.load(path, ["data.train_path=other/train", "train.init_from=prev"])
    assert overridden.data.train_path == str(tmp_path / "other" / "train")
    assert overridden.train.init_from == str(tmp_path / "prev")
    assert overridden.data.spec == config.data.spec
    # the resolved config reads back the same from anywhere (it is what a checkpoint saves)
    from recsys_mtl.config.loader import to_yaml

    saved = tmp_path / "elsewhere" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(to_yaml(overridden))
    assert TrainConfig.load(saved) == overridden


def test_the_shipped_configs_find_their_spec_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.load(REPO / "configs" / "kuairand.yaml")
    assert Path(config.data.spec) == REPO / "feature_specs" / "kuairand.yaml"
    assert Path(config.data.spec).is_file()


def test_a_missing_input_path_names_its_key(tmp_path):
    (tmp_path / "train").mkdir()
    path = write_config(tmp_path, {"data": {"train_path": "train", "spec": "specs/x.yaml", "eval_path": "nope"}})
    config = TrainConfig.load(path)
    with pytest.raises(ConfigError) as err:
        config.check_paths()
    assert str(err.value).splitlines() == [
        "2 problems:",
        f"  data.spec: {tmp_path / 'specs' / 'x.yaml'}: no such file or directory",
        f"  data.eval_path: {tmp_path / 'nope'}: no such file or directory",
    ]


def test_switching_the_weighting_method_with_set_drops_the_other_methods_args():
    demo = REPO / "configs" / "demo.yaml"  # its header says: --set weighting.method=equal
    assert TrainConfig.load(demo).weighting.args == {"mode": "rec", "num_groups": 4}
    assert TrainConfig.load(demo, ["weighting.method=equal"]).weighting.args == {}
    assert TrainConfig.load(demo, ["weighting.method=famo"]).weighting.args == {}
    assert TrainConfig.load(demo, ["weighting.method=go4align"]).weighting.args == {"mode": "rec", "num_groups": 4}
    given = TrainConfig.load(demo, ["weighting.method=go4align", "weighting.args={num_groups: 2}"])
    assert given.weighting.args == {"num_groups": 2}


def test_args_that_the_method_does_not_take_are_a_config_error_with_the_fix():
    demo = REPO / "configs" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"weighting\.args: weighting method 'equal': unknown argument\(s\) num_groups; "
                                          r"allowed: none \(args belong to weighting\.method; give the new method's "
                                          r"with --set weighting\.args="):
        TrainConfig.load(demo, ["weighting.method=equal", "weighting.args={num_groups: 4}"])



@pytest.mark.parametrize("transform", ["standard", "log1p_standard"])
def test_a_standard_transform_without_statistics_is_an_error_pointing_at_infer_spec(tmp_path, transform):
    from recsys_mtl.config import FeatureSpec

    from .tiny import TINY_SPEC

    dense = [{"name": "price", "transform": transform, "mean": 1.5}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, "dense": dense}))
    with pytest.raises(ConfigError, match=rf"dense\[0\]: transform '{transform}' needs the column's mean and std .* "
                                          r"std is not given: `recsys-mtl data infer-spec DATA` computes them"):
        FeatureSpec.load(path)
    path.write_text(yaml.safe_dump({**TINY_SPEC, "dense": [{**dense[0], "std": 2.0}]}))
    assert FeatureSpec.load(path).dense[0].std == 2.0
