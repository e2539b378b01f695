"""`recsys-mtl bench train`: both loops run on the same steps, and the DLRM preset's spec is valid for the data."""

import argparse

import pytest

from recsys_mtl.bench.train import DEFAULTS, PRESETS, add_arguments, one_table_per_feature, resolve_arguments, run
from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.data.stream import ParquetStream


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_bench_prints_both_throughputs_and_their_ratio(tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    args = _args("--rows", "6000", "--tasks", "4", "--batch-size", "256", "--steps", "4", "--warmup", "2",
                 "--repeat", "1", "--set", "data.shuffle_buffer_rows=0")
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "plain TorchRec loop" in out and "framework (Trainer)" in out
    assert "ratio framework/plain:" in out and "4 tasks" in out


@pytest.mark.slow
def test_precisions_and_weightings_are_timed_in_every_combination_with_final_losses(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    args = _args("--rows", "3000", "--tasks", "4", "--batch-size", "256", "--steps", "2", "--warmup", "2",
                 "--repeat", "1", "--set", "data.shuffle_buffer_rows=0", "--precision", "fp32", "bf16",
                 "--weighting", "equal", "go4align")
    assert run(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("precision  weighting"):].splitlines()
    rows = [line.split() for line in table[1:5]]
    assert [(r[0], r[1]) for r in rows] == [("fp32", "equal"), ("fp32", "go4align"), ("bf16", "equal"),
                                           ("bf16", "go4align")]
    assert rows[0][-1] == "+0.000%" and rows[2][-1] != "+0.000%"  # bf16 ends on another loss than fp32
    assert "go4align / equal framework throughput at fp32:" in out and "go4align / equal framework throughput at bf16:" in out


def test_preset_fills_only_the_options_not_given():
    args = _args("--preset", "dlrm", "--steps", "20", "--set", "weighting.method=go4align")
    resolve_arguments(args)
    dlrm = PRESETS["dlrm"]
    assert (args.steps, args.tasks, args.batch_size, args.config) == (20, 64, 8192, dlrm["config"])
    # the preset's overrides come first so the user's --set wins
    assert args.overrides == dlrm["overrides"] + ["weighting.method=go4align"]
    plain = _args()
    resolve_arguments(plain)
    assert all(getattr(plain, k) == v for k, v in DEFAULTS.items())


def test_one_table_per_feature_keeps_every_id_in_range(synth_small, tmp_path):
    spec = FeatureSpec.load(one_table_per_feature(synth_small / "_feature_spec.yaml", tmp_path / "spec.yaml", 2000, 8))
    assert len(spec.tables) == len(spec.sparse) and all(t.num_embeddings == 2000 for t in spec.tables.values())
    assert {f.table for f in spec.sparse} == {f"t_{f.name}" for f in spec.sparse}
    # the stream checks every id against its table: reading all of it is the test
    stream = ParquetStream(synth_small, spec, 1024, shuffle=False, drop_remainder=False)
    assert sum(b.labels.shape[0] for b in stream) == stream.num_rows


def test_the_dlrm_preset_refuses_a_machine_without_a_gpu():
    import pytest
    import torch

    from recsys_mtl.config.loader import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="--preset dlrm needs a GPU"):
        run(_args("--preset", "dlrm"))


def test_step_counts_the_timing_cannot_use_are_config_errors_naming_the_options(tmp_path, monkeypatch):
    import pytest

    from recsys_mtl.config.loader import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--steps \(20\) must be a positive multiple of --warmup \(3\)"):
        run(_args("--steps", "20", "--warmup", "3"))
    with pytest.raises(ConfigError, match=r"--rows 50,000 makes 24 batches .* give --rows 51,200 or more"):
        run(_args("--rows", "50000", "--batch-size", "2048", "--steps", "20", "--warmup", "5"))
