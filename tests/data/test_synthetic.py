import json

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from recsys_mtl.config import FeatureSpec
from recsys_mtl.data.stream import _data_files
from recsys_mtl.data.synthetic import SynthConfig, feature_spec_dict, generate_synthetic



def labels(folder, names):
    table = ds.dataset(_data_files([folder])).to_table(columns=names)
    return np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in names], 1)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    cfg = SynthConfig(tasks=4, rows=5000, days=2, rows_per_file=2048, row_group_size=1024, table_scale=0.001)
    a = generate_synthetic(tmp_path / "a", cfg)
    b = generate_synthetic(tmp_path / "b", cfg)
    c = generate_synthetic(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 1}))
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    for f in files:
        assert pq.read_table(a / f).equals(pq.read_table(b / f))
    assert not pq.read_table(a / files[0]).equals(pq.read_table(c / files[0]))


def test_layout_is_date_partitioned_with_several_files_and_sized_row_groups(synth_small):
    files = sorted(synth_small.rglob("*.parquet"))
    assert len(files) == 3 * 1 and all(f.parent.name.startswith("date=2026-01-0") for f in files)
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_row_groups == 4 and meta.row_group(0).num_rows == 2048


def test_default_row_groups_are_128k_rows(tmp_path):
    out = generate_synthetic(tmp_path / "d", SynthConfig(tasks=2, rows=140_000, days=1, table_scale=0.001))
    meta = pq.ParquetFile(next(out.rglob("*.parquet"))).metadata
    assert meta.row_group(0).num_rows == 131_072


def test_spec_has_zipf_sparse_ids_multi_valued_lists_and_dense_features(synth_small):
    spec = FeatureSpec.load(synth_small / "_feature_spec.yaml")
    assert len(spec.sparse) >= 20 and len(spec.dense) >= 10
    multi = [f.name for f in spec.sparse if f.multi_valued]
    assert {"hist_items", "user_tags"} <= set(multi)
    assert spec.features_of_table("item") == ["item_id", "hist_items"]  # shared table
    items = ds.dataset(_data_files([synth_small])).to_table(columns=["item_id"]).column("item_id").to_numpy()
    counts = np.sort(np.bincount(items))[::-1]
    assert counts[: len(counts) // 10].sum() > 0.4 * counts.sum()  # head-heavy popularity


def test_tasks_span_base_rates_have_nulls_and_come_in_correlated_families(tmp_path):
    out = generate_synthetic(tmp_path / "d", SynthConfig(tasks=32, rows=120_000, days=1, table_scale=0.01))
    meta = json.loads((out / "_synthetic.json").read_text())
    spec = FeatureSpec.load(out / "_feature_spec.yaml")
    y = labels(out, spec.task_names)
    rates = np.nanmean(y, 0)
    assert rates.min() < 0.003 and rates.max() > 0.5
    for name, target in meta["target_base_rates"].items():
        if target > 0.02 and name not in meta["post_click_tasks"]:
            assert abs(rates[spec.task_names.index(name)] - target) < 0.25 * target + 0.005, name
    post = spec.task_names.index(meta["post_click_tasks"][0])
    assert np.isnan(y[:, post]).any() and (np.isnan(y[:, post]) == (y[:, 0] == 0)).all()
    fam = meta["task_families"]
    common = [i for i, n in enumerate(spec.task_names) if rates[i] > 0.03 and not np.isnan(y[:, i]).any()]
    corr = np.corrcoef(y[:, common].T)
    within = [corr[a, b] for a in range(len(common)) for b in range(a + 1, len(common))
              if fam[spec.task_names[common[a]]] == fam[spec.task_names[common[b]]]]
    across = [corr[a, b] for a in range(len(common)) for b in range(a + 1, len(common))
              if fam[spec.task_names[common[a]]] != fam[spec.task_names[common[b]]]]
    assert np.mean(within) > 0.1 > abs(np.mean(across))


def test_shipped_synthetic_specs_match_the_generator(repo_root):
    for tasks in (32, 64):
        shipped = yaml.safe_load((repo_root / "feature_specs" / f"synthetic_{tasks}.yaml").read_text())
        assert shipped == feature_spec_dict(SynthConfig(tasks=tasks))
        FeatureSpec.load(repo_root / "feature_specs" / f"synthetic_{tasks}.yaml")


def test_invalid_generator_settings_are_rejected():
    with pytest.raises(ValueError, match=r"tasks must be in \[1, 128\], got 129"):
        SynthConfig(tasks=129)
    with pytest.raises(ValueError, match="table_scale"):
        SynthConfig(table_scale=0)


def test_post_click_all_labels_writes_each_post_click_label_on_every_row_agreeing_where_clicked(tmp_path):
    import numpy as np
    import pyarrow.dataset as pads

    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    out = generate_synthetic(tmp_path / "d", SynthConfig(tasks=8, rows=2000, days=1, seed=0, table_scale=0.001,
                                                         post_click_all_labels=True))
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table(
        columns=["click", "conversion", "conversion_all"])
    click, all_rows = table.column("click").to_numpy(), table.column("conversion_all").to_numpy()
    conversion = table.column("conversion").to_numpy(zero_copy_only=False)
    assert table.column("conversion_all").null_count == 0 and table.column("conversion").null_count > 0
    clicked = click == 1
    assert np.array_equal(conversion[clicked], all_rows[clicked])
