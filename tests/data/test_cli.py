"""The data commands as a user runs them: exit codes, output, and error messages."""

import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from recsys_mtl.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "recsys_mtl.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_data_synth_then_summary_reports_each_tasks_coverage_and_base_rate(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--tasks", "5", "--rows", "3000", "--days", "2", "--table-scale", "0.001", "--out", str(out)]) == 0
    assert "wrote 3,000 rows, 5 tasks, 2 days" in capsys.readouterr().out
    assert main(["data", "summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3,000 rows in 2 files" in text and "click" in text and "multi-valued features" in text
    spec = yaml.safe_load((out / "_feature_spec.yaml").read_text())
    table = pq.read_table(sorted(out.rglob("*.parquet")))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if len(line.split()) == 3}
    for task in spec["tasks"]:
        column = table.column(task.get("label") or task["name"])
        labelled = len(column) - column.null_count
        assert rows[task["name"]] == [f"{labelled / len(column):.1%}", f"{pc.sum(column).as_py() / labelled:.4f}"]


def test_synth_into_existing_folder_fails_cleanly_with_exit_code_2(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("mine")
    r = run_cli("data", "synth", "--rows", "100", "--out", tmp_path / "keep")
    assert r.returncode == 2 and "already exists and is not empty" in r.stderr
    assert (tmp_path / "keep" / "precious.txt").read_text() == "mine"


def test_bad_spec_is_reported_without_a_traceback(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "x", "tabels": {}}))
    r = run_cli("data", "summary", tmp_path / "d", "--spec", tmp_path / "spec.yaml")
    assert r.returncode == 2
    assert "spec.yaml: tabels: unknown key (did you mean 'tables'?)" in r.stderr and "Traceback" not in r.stderr


def test_kuairand_command(tmp_path, kuairand_dir, kuairand_src, capsys):
    assert main(["data", "kuairand", "--src", str(kuairand_src), "--out", str(tmp_path / "kr")]) == 0
    assert (tmp_path / "kr" / "train").is_dir() and (tmp_path / "kr" / "test").is_dir()


def test_bench_data_prints_both_throughputs_and_their_ratio(tmp_path, capsys):
    assert main(["bench", "data", "--rows", "20000", "--tasks", "4", "--repeats", "1", "--batch-size", "1024", "--cache", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "raw pyarrow scan" in text and "ParquetStream" in text and "reader/raw" in text


def test_demo_trains_both_methods_evaluates_compares_and_prints_the_ui_command(tmp_path, capsys):
    """The README's main job with small flags: data, GO4Align and equal runs, evaluation, comparison."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--rows", "8000", "--tasks", "4", "--table-scale", "0.001", "--epochs", "1",
            "--batch-size", "256", "--n-boot", "20", "--groups", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for marker in ("[1/5] generating 8,000 synthetic rows", "[2/5] training with GO4Align", "[3/5] training with equal",
                   "4 binary + 4 regression tasks", "watch_time (nmse)",  # the demo mixes binary and regression heads
                   "[4/5] offline evaluation", "dNE|NMSE [95% CI]", "mean relative NE|NMSE change vs", "[5/5] comparison",
                   "NE|NMSE chg % vs first", "(mean)", f"mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}"):
        assert marker in text, marker
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["equal", "eval equal", "eval go4align", "go4align"]
    assert main(argv) == 0  # a second run reuses the data and starts fresh runs
    assert "[1/5] reusing synthetic data" in capsys.readouterr().out


def test_kuairand_command_takes_split_and_end_dates(tmp_path, kuairand_src):
    if not (kuairand_src / "kuairand27k_standard_kcore15_likehate.tsv").exists():
        pytest.skip(f"KuaiRand subset not found at {kuairand_src} (set RECSYS_MTL_KUAIRAND)")
    out = tmp_path / "kr"
    assert main(["data", "kuairand", "--src", str(kuairand_src), "--out", str(out), "--split-date", "2022-04-17",
                 "--end-date", "20220418"]) == 0
    assert [p.name for p in (out / "test").iterdir()] == ["date=2022-04-18"]


def test_kuairand_command_with_a_bad_date_exits_2_naming_it(tmp_path, kuairand_src):
    r = run_cli("data", "kuairand", "--src", kuairand_src, "--out", tmp_path / "kr", "--split-date", "18.04.2022")
    assert r.returncode == 2 and "date '18.04.2022': expected YYYYMMDD or YYYY-MM-DD" in r.stderr
