"""The weighting experiment runner on tiny data: 2 methods x 1 seed, seconds, no full grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.experiments import weighting as exp

REPO = Path(__file__).resolve().parents[2]


def tiny_experiment(tmp_path: Path, **changes) -> exp.WeightingExperimentConfig:
    doc = {
        "dataset": {"kind": "synthetic", "dir": str(tmp_path / "data"), "tasks": 4, "rows": 3000, "days": 3,
                    "test_days": 1, "table_scale": 0.001, "seed": 3},
        "train_config": str(REPO / "configs" / "test_tiny.yaml"),
        "set": ["data.batch_size=128"],
        "seeds": [0],
        "methods": {"equal": {}, "go4align": {"num_groups": 2, "beta": 1.0e-4}},
        "evaluation": {"n_boot": 20},
    }
    doc.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return exp.WeightingExperimentConfig.load(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    cfg = tiny_experiment(tmp)
    out = tmp / "out"
    res = exp.run_experiment(cfg, out, jobs=0, threads=1)
    return cfg, out, res


def test_every_method_and_seed_is_trained_scored_and_tabulated(finished):
    cfg, out, res = finished
    assert set(res["methods"]) == {"equal", "go4align"}
    assert res["test_rows"] == 1000 and len(res["tasks"]) == 4
    for method in ("equal", "go4align"):
        run = out / "runs" / method / "seed0"
        assert (run / "predictions.pt").exists() and (run / "run.json").exists()
        assert not (run / "checkpoints").exists()
        m = res["methods"][method]
        assert len(m["ne_mean"]) == 4 and all(0 < v < 2 for v in m["ne_mean"] if v == v)
        assert m["per_seed"]["0"]["steps"] > 0
    assert res["methods"]["equal"]["mean_rel_ne_change"] == 0.0
    go = res["methods"]["go4align"]
    lo, hi = go["pooled_bootstrap"]["ci95"]
    assert lo <= go["pooled_bootstrap"]["mean_rel_ne_change"] <= hi
    assert math.isclose(go["pooled_bootstrap"]["mean_rel_ne_change"], go["mean_rel_ne_change"], rel_tol=1e-6)
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"]["go4align"]["args"] == {"num_groups": 2, "beta": 1.0e-4}
    md = (out / "results.md").read_text()
    assert "| go4align | num_groups=2, beta=0.0001 |" in md and "## Per-task test NE" in md


def test_runs_share_the_training_config_except_weighting_and_seed(finished):
    _, out, _ = finished
    a = yaml.safe_load((out / "runs" / "equal" / "seed0" / "train_config.yaml").read_text())
    b = yaml.safe_load((out / "runs" / "go4align" / "seed0" / "train_config.yaml").read_text())
    assert a["weighting"] == {"method": "equal", "args": {}}
    assert b["weighting"] == {"method": "go4align", "args": {"num_groups": 2, "beta": 1.0e-4}}
    for doc in (a, b):
        doc.pop("weighting")
        doc["train"].pop("output_dir")
        doc["train"]["checkpoint"].pop("dir")
    assert a == b and a["data"]["batch_size"] == 128


def test_finished_runs_are_reused_not_retrained(finished, monkeypatch):
    cfg, out, _ = finished
    monkeypatch.setattr(exp, "train_and_predict", lambda *a, **k: pytest.fail("a finished run was retrained"))
    monkeypatch.setattr(exp, "_launch", lambda *a, **k: pytest.fail("a finished run was retrained"))
    res = exp.run_experiment(cfg, out, methods=["go4align"], jobs=1)
    assert set(res["methods"]) == {"equal", "go4align"}  # the baseline always comes along


def _one_finished_run(tmp_path: Path):
    """An experiment of one run, finished: (config, out, its run.json, that file's mtime)."""
    cfg = tiny_experiment(tmp_path, methods={"equal": {}})
    out = tmp_path / "out"
    run_json = out / "runs" / "equal" / "seed0" / "run.json"
    exp.run_experiment(cfg, out, jobs=0)
    return cfg, out, run_json, run_json.stat().st_mtime_ns


def test_a_finished_run_whose_training_config_changed_is_trained_again(tmp_path):
    import dataclasses

    cfg, out, run_json, first = _one_finished_run(tmp_path)
    exp.run_experiment(cfg, out, jobs=0)
    assert run_json.stat().st_mtime_ns == first  # same config: reused
    exp.run_experiment(dataclasses.replace(cfg, set=list(cfg.set) + ["optim.dense.lr=0.02"]), out, jobs=0)
    assert run_json.stat().st_mtime_ns != first
    assert yaml.safe_load((run_json.parent / "train_config.yaml").read_text())["optim"]["dense"]["lr"] == 0.02


def test_a_dataset_prepared_with_other_settings_is_refused_and_its_runs_are_not_reused(tmp_path):
    import dataclasses
    import shutil

    cfg, out, run_json, first = _one_finished_run(tmp_path)
    smaller = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, rows=2000, tasks=2))
    with pytest.raises(ConfigError, match=r"dataset.dir .* was prepared with \{.*'rows': 3000.*\}, and the config now "
                                          r"says \{.*'rows': 2000.*\}: remove that folder"):
        exp.run_experiment(smaller, out, jobs=0)
    (Path(cfg.dataset.dir) / exp.DATASET_STAMP).unlink()  # as prepared before stamps: synthetic.json tells
    with pytest.raises(ConfigError, match=r"was prepared with \{.*'rows': 3000.*\}"):
        exp.run_experiment(smaller, out, jobs=0)
    shutil.rmtree(cfg.dataset.dir)  # as the error says: made again with the new settings
    res = exp.run_experiment(smaller, out, jobs=0)
    assert run_json.stat().st_mtime_ns != first  # trained again on the new data, not reused
    assert res["dataset"]["rows"] == 2000 and len(res["tasks"]) == 2


def test_one_run_in_its_own_process_writes_the_same_files(tmp_path):
    cfg = tiny_experiment(tmp_path, methods={"equal": {}})
    res = exp.run_experiment(cfg, tmp_path / "out", jobs=1, threads=1)
    assert res["methods"]["equal"]["per_seed"]["0"]["finite_predictions"]
    assert (tmp_path / "out" / "runs" / "equal" / "seed0" / "log.txt").exists()


def test_derived_arguments_give_rarer_tasks_larger_static_weights_with_mean_one(finished):
    cfg, _, _ = finished
    data = Path(cfg.dataset.dir)
    rates = exp.train_base_rates(data)
    w = exp.resolve_method_args({"weights": "inverse_base_rate_entropy"}, data, seed=0)["weights"]
    assert math.isclose(sum(w) / len(w), 1.0, rel_tol=1e-5)
    order = sorted(range(len(w)), key=lambda t: min(list(rates.values())[t], 1 - list(rates.values())[t]))
    assert w[order[0]] == max(w)
    assert exp.resolve_method_args({"seed": "train_seed"}, data, seed=7) == {"seed": 7}


def test_labelled_variants_of_one_method_are_separate_runs(tmp_path):
    cfg = tiny_experiment(tmp_path, methods={"equal": {}, "go4align@k1": {"num_groups": 1}})
    doc = exp.run_train_config(cfg, tmp_path, "go4align@k1", {"num_groups": 1}, 0, tmp_path / "r")
    assert doc["weighting"] == {"method": "go4align", "args": {"num_groups": 1}}


@pytest.mark.parametrize("change, message", [
    ({"methods": {"equal": {}, "magic": {}}}, "unknown weighting method"),
    ({"methods": {"go4align": {"num_groups": 2}}}, "'equal' is not one of the methods"),
    ({"seeds": []}, "needs at least one seed"),
    ({"dataset": {"kind": "kuairand", "dir": "x"}}, "needs the source folder"),
])
def test_bad_experiment_configs_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        tiny_experiment(tmp_path, **change)


@pytest.mark.parametrize("name", sorted(exp.DATASET_CONFIGS))
def test_shipped_experiment_configs_load_and_their_runs_validate(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = exp.WeightingExperimentConfig.load(exp.DATASET_CONFIGS[name])
    from recsys_mtl.config.loader import from_dict
    from recsys_mtl.config.train import TrainConfig

    for method, args in cfg.methods.items():
        args = {k: v for k, v in args.items() if v not in exp.DERIVED_ARGUMENTS}
        from_dict(TrainConfig, exp.run_train_config(cfg, tmp_path, method, args, 0, tmp_path / "r"), name)


def test_cli_lists_the_experiment():
    from recsys_mtl.cli import build_parser

    args = build_parser().parse_args(["experiment", "weighting", "--dataset", "kuairand", "--out", "x", "--jobs", "2"])
    assert args.func is exp.run and args.jobs == 2


def test_a_run_config_written_as_text_or_as_numbers_is_the_same_run(tmp_path):
    """`beta: 1e-4` is the string '1e-4' to YAML 1.1 and was saved as 0.0001 by other versions: the same run."""
    cfg = tiny_experiment(tmp_path, methods={"go4align": {"num_groups": 2, "beta": "1e-4"}, "equal": {}})
    data_dir = Path(cfg.dataset.dir)
    as_text = exp.run_train_config(cfg, data_dir, "go4align", {"num_groups": 2, "beta": "1e-4"}, 0, tmp_path / "r")
    as_number = exp.run_train_config(cfg, data_dir, "go4align", {"num_groups": 2, "beta": 0.0001}, 0, tmp_path / "r")
    other = exp.run_train_config(cfg, data_dir, "go4align", {"num_groups": 2, "beta": 0.001}, 0, tmp_path / "r")
    assert exp._same_training(as_text, as_number) and not exp._same_training(as_text, other)


def test_an_experiment_with_a_regression_task_tabulates_its_nmse_beside_the_binary_ne(tmp_path):
    """dataset.regression_tasks adds watch-time targets; the tables rank every task by its normalized error."""
    cfg = tiny_experiment(tmp_path, methods={"equal": {}, "static": {"weights": [1, 1, 1, 1, 0.5]}})
    cfg = exp.WeightingExperimentConfig(**{**cfg.__dict__,
                                           "dataset": exp.ExperimentDataset(**{**cfg.dataset.__dict__,
                                                                               "regression_tasks": 1})})
    res = exp.run_experiment(cfg, tmp_path / "out", jobs=0, threads=1)
    assert res["tasks"][-1] == "watch_time" and res["task_types"] == ["binary"] * 4 + ["regression"]
    for method in ("equal", "static"):
        nmse = res["methods"][method]["ne_mean"][-1]  # the regression task's normalized error is its NMSE
        assert 0.3 < nmse < 2.0
    assert math.isfinite(res["methods"]["static"]["pooled_bootstrap"]["mean_rel_ne_change"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert "watch_time (nmse)" in table and "Per-task test NE|NMSE" in table
    saved = yaml.safe_load((tmp_path / "out" / "runs" / "equal" / "seed0" / "train_config.yaml").read_text())
    assert saved["data"]["spec"].endswith("feature_spec.yaml")


def test_a_kuairand_validation_dataset_holds_only_train_days(kuairand_src, tmp_path):
    """split_date / end_date carve a validation split from the train days: no test day (after 20220418) is read."""
    import pyarrow.dataset as pads

    from recsys_mtl.experiments.weighting import ExperimentDataset, dataset_stamp, prepare_data

    ds = ExperimentDataset(kind="kuairand", dir=str(tmp_path / "kr_valid"), src=str(kuairand_src),
                           split_date=20220415, end_date=20220418)
    out = prepare_data(ds)
    dates = {split: sorted(int(str(d).replace("-", "")) for d in pads.dataset(
                 out / split, format="parquet", partitioning="hive").to_table(columns=["date"]).column("date")
                 .unique().to_pylist())
             for split in ("train", "test")}
    assert max(dates["train"]) <= 20220415 < min(dates["test"])
    assert max(dates["test"]) <= 20220418
    assert dataset_stamp(ds)["split_date"] == 20220415
    other = ExperimentDataset(kind="kuairand", dir=ds.dir, src=ds.src)  # the default (test) split
    with pytest.raises(Exception, match="prepared with"):
        prepare_data(other)


def test_a_registered_dataset_kind_is_prepared_and_stamped_without_a_branch_on_its_name(tmp_path):
    import yaml

    from recsys_mtl.config.loader import ConfigError, from_dict
    from tests.data.tiny import TINY_SPEC, write_tiny

    @exp.register_dataset("test_tiny_kind")
    class TinyKind(exp.ExperimentDatasetKind):
        def stamp(self, ds):
            return {"kind": ds.kind, "rows": ds.rows}

        def prepare(self, ds, out):
            write_tiny(out / "train", files=1, rows_per_file=ds.rows)
            write_tiny(out / "test", files=1, rows_per_file=ds.rows, seed=1)
            (out / "_feature_spec.yaml").write_text(yaml.safe_dump(TINY_SPEC))
            (out / exp.DATASET_STAMP).write_text(json.dumps(self.stamp(ds)))

    try:
        ds = from_dict(exp.ExperimentDataset, {"kind": "test_tiny_kind", "dir": str(tmp_path / "d"), "rows": 300}, "x")
        out = exp.prepare_data(ds)
        assert exp.train_base_rates(out).keys() == {"click", "buy"}
        assert exp.prepare_data(ds) == out  # made once, then recognised by its stamp
        with pytest.raises(ConfigError, match=r"was prepared with \{'kind': 'test_tiny_kind', 'rows': 300\}"):
            exp.prepare_data(from_dict(exp.ExperimentDataset, {"kind": "test_tiny_kind", "dir": str(out),
                                                               "rows": 200}, "x"))
    finally:
        exp.EXPERIMENT_DATASETS.pop("test_tiny_kind")
    with pytest.raises(ConfigError, match=r"x: kind: unknown dataset kind 'test_tiny_kind'; set it to one of: "
                                          r"kuairand, synthetic"):
        from_dict(exp.ExperimentDataset, {"kind": "test_tiny_kind", "dir": "d"}, "x")


def test_a_gauc_group_adds_per_task_gauc_equal_to_a_direct_per_user_computation(finished, tmp_path):
    import numpy as np
    import pyarrow.dataset as pads
    import torch

    from tests.metrics.test_grouped_auc import direct_gauc

    cfg, out, _ = finished
    doc = yaml.safe_load((Path(cfg.dataset.dir).parent / "experiment.yaml").read_text())
    doc["evaluation"]["gauc_group"] = "user_id"
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    grouped = exp.WeightingExperimentConfig.load(path)
    runs = {(m, 0): json.loads((out / "runs" / m / "seed0" / exp.RUN_DONE).read_text()) for m in ("equal", "go4align")}
    res = exp.summarize(grouped, out, ["equal", "go4align"], [0], runs)
    test = Path(cfg.dataset.dir) / "test"
    users = pads.dataset(sorted(str(p) for p in test.rglob("*.parquet"))).to_table(columns=["user_id"])
    users = users.column("user_id").to_numpy()
    p = torch.load(out / "runs" / "go4align" / "seed0" / exp.PREDICTIONS)
    want = direct_gauc(p["logits"].double().numpy(), p["labels"].numpy(), p["mask"].numpy(), users)
    np.testing.assert_allclose(res["methods"]["go4align"]["gauc_mean"], want, rtol=1e-9)
    assert "## Per-task test GAUC by user_id" in exp.to_markdown(res, "t")
