import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from recsys_mtl.config import FeatureSpec
from recsys_mtl.data.kuairand import LEAKING, TASKS
from recsys_mtl.data.stream import ParquetStream, _data_files



def test_time_split_matches_the_data_readme(kuairand_dir):
    spec = FeatureSpec.load(kuairand_dir / "feature_spec.yaml")
    train = ParquetStream(kuairand_dir / "train", spec, 4096, drop_remainder=False)
    test = ParquetStream(kuairand_dir / "test", spec, 4096, drop_remainder=False)
    assert (train.num_rows, test.num_rows) == (35_716, 6_112)
    train_days = sorted(p.name for p in (kuairand_dir / "train").iterdir())
    test_days = sorted(p.name for p in (kuairand_dir / "test").iterdir())
    assert train_days[-1] == "date=2022-04-18" and test_days[0] == "date=2022-04-19"


def test_no_leaking_columns_and_all_seven_tasks(kuairand_dir):
    schema = pq.read_schema(next((kuairand_dir / "train").rglob("*.parquet")))
    for col in LEAKING + ["time_ms", "timestamp"]:
        assert col not in schema.names
    spec = FeatureSpec.load(kuairand_dir / "feature_spec.yaml")
    assert spec.task_names == TASKS and len(TASKS) == 7


def test_label_rates_match_the_readme(kuairand_dir):
    spec = FeatureSpec.load(kuairand_dir / "feature_spec.yaml")
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
    assert shipped == yaml.safe_load((kuairand_dir / "feature_spec.yaml").read_text())
