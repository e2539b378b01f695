"""`recsys-mtl evaluate` streams by default: it agrees with `--exact`, and `--nproc 2` with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys_mtl.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """4 tasks, 6000 rows in row groups of 500 (so 2 processes split 12 row groups); two models, seeds 0 and 1."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    root = tmp_path_factory.mktemp("streaming_eval")
    data = generate_synthetic(root / "data", SynthConfig(tasks=4, rows=6000, days=2, seed=4, rows_per_file=1500,
                                                         row_group_size=500, table_scale=0.0005))
    runs = {}
    for seed in (0, 1):
        out = root / f"run{seed}"
        assert main(["train", str(CONFIG), f"--set=data.train_path={data}", f"--set=data.spec={data / '_feature_spec.yaml'}",
                     f"--set=train.output_dir={out}", "--set=data.batch_size=256", f"--set=train.seed={seed}",
                     "--set=train.epochs=2"]) == 0
        runs[f"run{seed}"] = out / "checkpoints"
    return {"data": data, **runs}


def _evaluate(trained, out: Path, *extra: str) -> dict[str, float]:
    assert main(["evaluate", "--checkpoint", str(trained["run0"]), "--baseline", str(trained["run1"]), "--data",
                 str(trained["data"]), "--no-log", "--out", str(out), "--n-boot", "100", *extra]) == 0
    return json.loads((out / "eval_metrics.json").read_text())["metrics"]


def _values(metrics: dict[str, float], metric: str) -> np.ndarray:
    return np.array([v for k, v in sorted(metrics.items()) if k.startswith(f"eval/{metric}/")])


def test_streaming_evaluation_agrees_with_the_exact_in_memory_path(trained, tmp_path, capsys):
    streamed = _evaluate(trained, tmp_path / "stream")
    exact = _evaluate(trained, tmp_path / "exact", "--exact")
    assert streamed.keys() == exact.keys()
    printed = capsys.readouterr().out
    assert "[streaming, 1 process]" in printed and "[exact, in memory]" in printed
    for metric in ("ne", "logloss", "calibration", "base_rate", "delta_ne", "rel_ne_change"):
        np.testing.assert_allclose(_values(streamed, metric), _values(exact, metric), rtol=1e-5, err_msg=metric)
    np.testing.assert_allclose(_values(streamed, "auc"), _values(exact, "auc"), atol=1e-4)
    np.testing.assert_allclose(_values(streamed, "delta_auc"), _values(exact, "delta_auc"), atol=2e-4)


def test_two_processes_give_the_one_process_results_and_the_same_bootstrap_intervals(trained, tmp_path):
    one = _evaluate(trained, tmp_path / "one")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_mtl.cli", "evaluate", "--checkpoint", str(trained["run0"]), "--baseline",
         str(trained["run1"]), "--data", str(trained["data"]), "--no-log", "--out", str(tmp_path / "two"),
         "--n-boot", "100", "--nproc", "2"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("mean relative NE change") == 1  # rank 0 alone prints the report
    assert "[streaming, 2 processes]" in proc.stdout
    two = json.loads((tmp_path / "two" / "eval_metrics.json").read_text())
    assert two["metrics"].keys() == one.keys()
    # per-row values are float32 (logits of other batch shapes differ by ~1e-7): a delta of NEs keeps ~1e-8
    for key in one:
        np.testing.assert_allclose(two["metrics"][key], one[key], rtol=1e-5, atol=1e-7, err_msg=key)
    # the intervals come from replicate weights keyed by row position: the same in both
    intervals = json.loads((tmp_path / "one" / "eval_metrics.json").read_text())["intervals"]
    assert intervals.keys() == two["intervals"].keys() and len(intervals) == 13
    for key in intervals:
        np.testing.assert_allclose(two["intervals"][key], intervals[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_exact_with_several_processes_is_refused_in_one_line(trained, capsys):
    assert main(["evaluate", "--checkpoint", str(trained["run0"]), "--data", str(trained["data"]), "--no-log",
                 "--exact", "--nproc", "2"]) == 2
    assert "--exact keeps every row in one process" in capsys.readouterr().err


def test_gauc_is_the_same_exact_value_streamed_in_one_or_two_processes_and_in_memory(trained, tmp_path):
    """GAUC keeps every labelled row (group, scores, labels): no approximation in any mode."""
    gauc = ("--gauc-group", "user_id")
    streamed = _evaluate(trained, tmp_path / "stream", *gauc)
    exact = _evaluate(trained, tmp_path / "exact", "--exact", *gauc)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_mtl.cli", "evaluate", "--checkpoint", str(trained["run0"]), "--baseline",
         str(trained["run1"]), "--data", str(trained["data"]), "--no-log", "--out", str(tmp_path / "two"),
         "--n-boot", "100", "--nproc", "2", *gauc], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "eval_metrics.json").read_text())["metrics"]
    for metric in ("gauc", "delta_gauc"):
        assert len(_values(exact, metric)) == 4
        np.testing.assert_allclose(_values(streamed, metric), _values(exact, metric), atol=1e-6, err_msg=metric)
        np.testing.assert_allclose(_values(two, metric), _values(exact, metric), atol=1e-6, err_msg=metric)
