import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from recsys_mtl.config import FeatureSpec
from recsys_mtl.data.errors import DataError
from recsys_mtl.data.kuairand import LEAKING, TASKS, parse_date
from recsys_mtl.data.stream import ParquetStream, _data_files



def test_time_split_matches_the_data_readme(kuairand_dir):
    spec = FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")
    train = ParquetStream(kuairand_dir / "train", spec, 4096, drop_remainder=False)
    test = ParquetStream(kuairand_dir / "test", spec, 4096, drop_remainder=False)
    assert (train.num_rows, test.num_rows) == (35_716, 6_112)
    train_days = sorted(p.name for p in (kuairand_dir / "train").iterdir())
    test_days = sorted(p.name for p in (kuairand_dir / "test").iterdir())
    assert train_days[-1] == "date=2022-04-18" and test_days[0] == "date=2022-04-19"


def test_no_leaking_columns_and_all_seven_tasks(kuairand_dir):
    schema = pq.read_schema(next((kuairand_dir / "train").rglob("*.parquet")))
    for col in [c for c in LEAKING if c != "play_time_ms"] + ["time_ms", "timestamp"]:
        assert col not in schema.names  # play_time_ms is kept as a label only (test_regression_data.py)
    spec = FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")
    assert spec.task_names == TASKS and len(TASKS) == 7


def test_label_rates_match_the_readme(kuairand_dir):
    spec = FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")
    table = ds.dataset(_data_files([kuairand_dir / "train", kuairand_dir / "test"])).to_table(columns=TASKS)
    rates = {t: table.column(t).to_numpy().mean() for t in TASKS}
    assert abs(rates["is_click"] - 0.657) < 0.002 and abs(rates["label"] - 0.807) < 0.002
    assert table.column("is_follow").to_numpy().sum() == 304


def test_vocabulary_is_fitted_on_train_only(kuairand_dir):
    train = ds.dataset(_data_files([kuairand_dir / "train"])).to_table(columns=["video_id"]).column("video_id").to_numpy()
    test = ds.dataset(_data_files([kuairand_dir / "test"])).to_table(columns=["video_id"]).column("video_id").to_numpy()
    assert train.min() >= 1  # every train video is in the vocabulary
    assert (test == 0).any()  # videos first seen in the test days are unknown (id 0)


def test_shipped_spec_matches_the_converter(kuairand_dir, repo_root):
    shipped = yaml.safe_load((repo_root / "feature_specs" / "kuairand.yaml").read_text())
    assert shipped == yaml.safe_load((kuairand_dir / "_feature_spec.yaml").read_text())


@pytest.fixture(scope="module")
def kuairand_valid_dir(kuairand_src, tmp_path_factory):
    from recsys_mtl.data.kuairand import convert_kuairand

    if not (kuairand_src / "kuairand27k_standard_kcore15_likehate.tsv").exists():
        pytest.skip(f"KuaiRand subset not found at {kuairand_src} (set RECSYS_MTL_KUAIRAND)")
    return convert_kuairand(kuairand_src, tmp_path_factory.mktemp("kr_valid") / "kr", split_date=20220415,
                            end_date=20220418)


def test_split_and_end_date_carve_a_validation_split_from_the_train_days(kuairand_valid_dir, kuairand_dir):
    days = lambda split: sorted(p.name for p in (kuairand_valid_dir / split).iterdir())  # noqa: E731
    assert days("train")[0] == "date=2022-04-08" and days("train")[-1] == "date=2022-04-15"
    assert days("test") == ["date=2022-04-16", "date=2022-04-17", "date=2022-04-18"]
    spec = FeatureSpec.load(kuairand_valid_dir / "_feature_spec.yaml")
    train = ParquetStream(kuairand_valid_dir / "train", spec, 4096, drop_remainder=False)
    valid = ParquetStream(kuairand_valid_dir / "test", spec, 4096, drop_remainder=False)
    assert train.num_rows + valid.num_rows == 35_716  # exactly the default split's train days
    assert "2022-04-15" in spec.description
    # the vocabulary is fitted on the earlier days only: fewer users than the default split knows
    default = FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")
    assert spec.tables["user"].num_embeddings < default.tables["user"].num_embeddings


@pytest.mark.parametrize("kwargs, message", [
    ({"split_date": 20220430}, "split_date 20220430: leaves no train or no test day"),
    ({"split_date": 20220301}, "split_date 20220301: leaves no train or no test day"),
    ({"split_date": 20220415, "end_date": 20220415}, "end_date 20220415 must be after split_date 20220415"),
])
def test_a_split_date_outside_the_data_is_refused_and_names_the_option(kuairand_src, tmp_path, kwargs, message):
    from recsys_mtl.data.kuairand import convert_kuairand

    if not (kuairand_src / "kuairand27k_standard_kcore15_likehate.tsv").exists():
        pytest.skip(f"KuaiRand subset not found at {kuairand_src} (set RECSYS_MTL_KUAIRAND)")
    with pytest.raises(DataError, match=message):
        convert_kuairand(kuairand_src, tmp_path / "kr", **kwargs)
    assert not (tmp_path / "kr").exists()


@pytest.mark.parametrize("value, expected", [("20220415", 20220415), ("2022-04-15", 20220415), (20220415, 20220415)])
def test_dates_are_read_as_yyyymmdd_with_or_without_dashes(value, expected):
    assert parse_date(value) == expected


@pytest.mark.parametrize("value", ["2022-13-01", "April", "202204"])
def test_a_malformed_date_is_a_data_error_quoting_it(value):
    with pytest.raises(DataError, match=f"date '{value}': expected YYYYMMDD or YYYY-MM-DD"):
        parse_date(value)


def test_history_counters_see_only_earlier_days_and_never_a_test_label():
    """Point in time: changing the labels of day d and later leaves every feature of days <= d alone, and
    changing any test-day label changes no feature at all (given the tasks' train rates, the smoothing prior)."""
    import numpy as np

    from recsys_mtl.data.kuairand import history_features

    rng = np.random.default_rng(0)
    n, split_day = 400, 4  # days 0..4 train, 5..6 test
    entity = rng.integers(0, 7, n)
    day = np.sort(rng.integers(0, 7, n))
    y = rng.binomial(1, 0.2, n).astype(np.float64)
    y[rng.random(n) < 0.1] = np.nan  # unlabelled rows
    base = history_features(entity, day, {"t": y}, split_day, "u", priors={"t": 0.2})
    for d in range(7):
        changed = y.copy()
        changed[day >= d] = np.where(np.isnan(y[day >= d]), 1.0, 1.0 - np.nan_to_num(y[day >= d]))
        after = history_features(entity, day, {"t": changed}, split_day, "u", priors={"t": 0.2})
        keep = day <= d if d <= split_day else np.ones(n, bool)  # test rows count train days only
        for name in base:
            np.testing.assert_array_equal(after[name][keep], base[name][keep], err_msg=f"{name}, labels from day {d}")
    # the counts are right: a train row's `u_n` is its entity's rows on earlier days; a test row's, on train days
    for i in rng.choice(n, 50, replace=False):
        until = min(day[i], split_day + 1)
        assert base["u_n"][i] == ((entity == entity[i]) & (day < until)).sum()
    # no history -> 0 (the task's train rate); more positives -> a higher rate
    first_day = day == 0
    assert (base["u_t"][first_day] == 0).all() and (base["u_n"][first_day] == 0).all()
    assert base["u_t"].std() > 0


def test_history_counters_are_dense_features_of_the_converted_data(kuairand_dir):
    spec = FeatureSpec.load(kuairand_dir / "_feature_spec.yaml")
    for prefix in ("user_hist", "video_hist"):
        assert f"{prefix}_n" in spec.dense_names
        assert all(f"{prefix}_{t}" in spec.dense_names for t in TASKS)
    first = ds.dataset(_data_files([kuairand_dir / "train" / "date=2022-04-08"])).to_table()
    assert (first.column("user_hist_n").to_numpy() == 0).all()  # the first day has no history
