"""Regression targets in the shipped data: synthetic watch-time-like targets and KuaiRand's play_time_ms (a label,
never a feature), their specs and configs."""

import math

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from recsys_mtl.cli import main
from recsys_mtl.config import ConfigError, FeatureSpec
from recsys_mtl.config.loader import from_dict, read_yaml
from recsys_mtl.config.train import TrainConfig
from recsys_mtl.data.stream import ParquetStream, _data_files
from recsys_mtl.data.synthetic import SynthConfig, feature_spec_dict, generate_synthetic

SMALL = dict(tasks=4, rows=6000, days=2, rows_per_file=4096, row_group_size=2048, table_scale=0.001, seed=3)


def columns(folder, names):
    table = ds.dataset(_data_files([folder])).to_table(columns=names)
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}


@pytest.fixture(scope="module")
def synth_regression(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synth_r") / "data", SynthConfig(**SMALL, regression_tasks=2))


def test_synthetic_regression_targets_are_heavy_tailed_positive_seconds_some_labelled_only_after_a_click(
        synth_regression):
    spec = FeatureSpec.load(synth_regression / "_feature_spec.yaml")
    assert spec.task_names[-2:] == ["watch_time", "dwell_time"] and spec.task_types[-2:] == ["regression"] * 2
    assert [t.loss_name for t in spec.tasks[-2:]] == ["mse", "huber"]
    cols = columns(synth_regression, ["click", "watch_time", "dwell_time"])
    watch, dwell, click = cols["watch_time"], cols["dwell_time"], cols["click"]
    assert np.isfinite(watch).all() and (watch > 0).all()  # labelled on every row
    assert np.isnan(dwell[click == 0]).all() and np.isfinite(dwell[click == 1]).all()  # only after a click
    median, p99 = np.percentile(watch, [50, 99])
    assert p99 / median > 5  # heavy upper tail (log-normal)
    logs = np.log(watch)
    assert abs(np.mean((logs - logs.mean()) ** 3) / logs.std() ** 3) < 0.3  # log-normal: symmetric in log space


def test_synthetic_watch_time_shares_the_latent_factors_of_its_binary_family(synth_regression):
    """watch_time follows the watch family (long_view): log watch time is clearly higher on long views."""
    cols = columns(synth_regression, ["long_view", "watch_time"])
    corr = np.corrcoef(np.log(cols["watch_time"]), cols["long_view"].astype(float))[0, 1]
    assert corr > 0.05  # 6,000 rows: a correlation of 0 would be within +-0.03


def test_adding_regression_tasks_changes_no_binary_label_and_is_deterministic_from_the_seed(tmp_path,
                                                                                          synth_regression):
    plain = generate_synthetic(tmp_path / "plain", SynthConfig(**SMALL))
    again = generate_synthetic(tmp_path / "again", SynthConfig(**SMALL, regression_tasks=2))
    binary = [t for t in FeatureSpec.load(plain / "_feature_spec.yaml").task_names]
    a, b = columns(plain, binary), columns(synth_regression, binary)
    for name in binary:
        np.testing.assert_array_equal(a[name].astype(float), b[name].astype(float))
    files = sorted(p.relative_to(again) for p in again.rglob("*.parquet"))
    for f in files:
        assert pq.read_table(again / f).equals(pq.read_table(synth_regression / f))
    other = generate_synthetic(tmp_path / "other", SynthConfig(**{**SMALL, "seed": 4}, regression_tasks=2))
    assert not np.array_equal(columns(other, ["watch_time"])["watch_time"],
                              columns(synth_regression, ["watch_time"])["watch_time"])


def test_the_reader_gives_the_log1p_of_the_synthetic_watch_time(synth_regression):
    spec = FeatureSpec.load(synth_regression / "_feature_spec.yaml")
    batch = next(iter(ParquetStream(synth_regression, spec, 64, shuffle=False)))
    raw = pq.read_table(sorted(synth_regression.rglob("*.parquet"))[0], columns=["watch_time"]).column(0)
    np.testing.assert_allclose(batch.labels[:, spec.task_names.index("watch_time")].numpy(),
                               np.log1p(raw.to_numpy()[:64]), rtol=1e-6)


def test_shipped_synthetic_regression_spec_matches_the_generator(repo_root):
    shipped = yaml.safe_load((repo_root / "feature_specs" / "synthetic_32_r2.yaml").read_text())
    assert shipped == feature_spec_dict(SynthConfig(tasks=32, regression_tasks=2))
    FeatureSpec.load(repo_root / "feature_specs" / "synthetic_32_r2.yaml")


def test_data_synth_regression_tasks_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--tasks", "3", "--regression-tasks", "1", "--rows", "2000", "--days", "1",
                 "--table-scale", "0.001", "--out", str(out)]) == 0
    assert "3 tasks + 1 regression tasks" in capsys.readouterr().out
    assert main(["data", "summary", str(out)]) == 0
    assert "watch_time" in (text := capsys.readouterr().out) and "regression: mean of the transformed label" in text
    with pytest.raises(ConfigError, match=r"regression_tasks must be in \[0, 16\], got 17 \(--regression-tasks\)"):
        SynthConfig(regression_tasks=17)


# ------------------------------------------------------------------------------ KuaiRand


def test_play_time_is_a_regression_label_and_never_a_feature(kuairand_dir):
    from recsys_mtl.data.kuairand import PLAY_TIME, PLAY_TIME_SPEC, TASKS

    schema = pq.read_schema(next((kuairand_dir / "train").rglob("*.parquet")))
    assert PLAY_TIME in schema.names and "comment_stay_time" not in schema.names
    spec = FeatureSpec.load(kuairand_dir / PLAY_TIME_SPEC)
    assert spec.task_names == TASKS + [PLAY_TIME] and spec.task_types[-1] == "regression"
    assert spec.tasks[-1].transform == "log1p"
    for s in (spec, FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")):
        feature_columns = [f.source for f in s.sparse] + [f.source for f in s.dense]
        assert not any("play" in c for c in feature_columns), feature_columns  # nor a history counter of it
    assert PLAY_TIME not in FeatureSpec.load(kuairand_dir / "_feature_spec.yaml").task_names


def test_play_time_labels_are_log1p_of_the_source_milliseconds(kuairand_dir, kuairand_src):
    import pyarrow.csv as pcsv

    from recsys_mtl.data.kuairand import INTERACTIONS, PLAY_TIME, PLAY_TIME_SPEC

    spec = FeatureSpec.load(kuairand_dir / PLAY_TIME_SPEC)
    stream = ParquetStream(kuairand_dir / "train", spec, 4096, shuffle=False, drop_remainder=False)
    labels = np.concatenate([b.labels[:, -1].numpy() for b in stream])
    assert len(labels) == 35_716 and np.isfinite(labels).all()
    source = pcsv.read_csv(kuairand_src / INTERACTIONS, parse_options=pcsv.ParseOptions(delimiter="\t"))
    train_ms = source.filter(source.column("date").to_numpy() <= 20220418).column(PLAY_TIME).to_numpy()
    assert np.sort(labels) == pytest.approx(np.sort(np.log1p(train_ms.astype(np.float64))), rel=1e-6)


def test_shipped_play_time_spec_matches_the_converter(kuairand_dir, repo_root):
    from recsys_mtl.data.kuairand import PLAY_TIME_SPEC

    shipped = yaml.safe_load((repo_root / "feature_specs" / "kuairand_play_time.yaml").read_text())
    assert shipped == yaml.safe_load((kuairand_dir / PLAY_TIME_SPEC).read_text())


def test_the_play_time_config_and_its_baseline_differ_only_in_the_spec_and_output(repo_root):
    with_head = read_yaml(repo_root / "configs" / "kuairand_play_time.yaml")
    without = read_yaml(repo_root / "configs" / "kuairand_play_time_baseline.yaml")
    assert with_head["data"].pop("spec") == "../feature_specs/kuairand_play_time.yaml"  # relative to configs/
    assert without["data"].pop("spec") == "../feature_specs/kuairand.yaml"
    assert with_head["train"].pop("output_dir") != without["train"].pop("output_dir")
    assert with_head == without and with_head["weighting"] == {"method": "equal"}
    for name in ("kuairand_play_time", "kuairand_play_time_baseline", "synthetic_regression"):
        from_dict(TrainConfig, read_yaml(repo_root / "configs" / f"{name}.yaml"), name)
    binary = FeatureSpec.load(repo_root / "feature_specs" / "kuairand.yaml")
    regression = FeatureSpec.load(repo_root / "feature_specs" / "kuairand_play_time.yaml")
    assert regression.task_names[:-1] == binary.task_names and regression.tables == binary.tables
    assert regression.dense == binary.dense and regression.sparse == binary.sparse
    assert math.isfinite(regression.tasks[-1].clip[1])
