"""The CLI end to end on real Parquet: 1 vs 2 processes, and SIGKILL + resume.

Each test launches fresh Python processes (import ~4 s each on 2 cores), so
runs are few steps on tiny tables.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recsys_mtl.train.trainer import TRAIN_LOG

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_tiny.yaml"
ROW_GROUP = 64


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    """768 rows in 12 row groups of 64 rows, 4 tasks, in date order."""
    from recsys_mtl.data.synthetic import SynthConfig, generate_synthetic

    cfg = SynthConfig(tasks=4, rows=768, days=3, seed=1, rows_per_file=256, row_group_size=ROW_GROUP,
                      table_scale=0.0001)
    return generate_synthetic(tmp_path_factory.mktemp("launch") / "data", cfg)


def train_cmd(data: Path, out: Path, *overrides: str, nproc: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "recsys_mtl.cli", "train", str(CONFIG),
           f"--set=data.train_path={data}", f"--set=data.spec={data / '_feature_spec.yaml'}",
           f"--set=train.output_dir={out}"]
    cmd += [f"--set={o}" for o in overrides]
    if nproc > 1:
        cmd += [f"--nproc={nproc}"]
    return cmd


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_ok(cmd: list[str], timeout: int = 240) -> str:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint as plain tensors (DCP -> torch.save), model and optimizers."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    dcp_to_torch_save(ckpt, out / "final.pt")
    state = torch.load(out / "final.pt", weights_only=False)
    for payload in ("train_state", "rng", "train_metrics"):  # the packed non-tensor state (it names output_dir)
        state.pop(payload, None)
    return {k: v for k, v in _flatten(state).items() if isinstance(v, torch.Tensor)}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow
def test_two_processes_with_table_and_row_wise_sharding_match_one_process(parquet, tmp_path):
    """Rank r of step s reads row group 2s+r; one process reads both as one batch: the same rows.

    Losses are all-reduced sums / global counts and gradients averaged over
    ranks, so the per-step losses must agree to float tolerance.
    """
    tables = ["user", "item", "music", "city", "hour"]
    sharding = "{" + ", ".join(f"{t}: {'row_wise' if i % 2 == 0 else 'table_wise'}" for i, t in enumerate(tables)) + "}"
    common = ("train.epochs=2", f"sharding.tables={sharding}", f"data.eval_path={parquet}")
    run_ok(train_cmd(parquet, tmp_path / "one", f"data.batch_size={2 * ROW_GROUP}", *common))
    log = run_ok(train_cmd(parquet, tmp_path / "two", f"data.batch_size={ROW_GROUP}", *common, nproc=2))
    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert len(one) == len(two) == 12
    torch.testing.assert_close(torch.tensor([s["losses"] for s in two]), torch.tensor([s["losses"] for s in one]),
                               rtol=1e-5, atol=1e-6)
    assert "row_wise/fused" in log and "table_wise/fused" in log
    assert log.count("eval step") == 2  # rank 0 only, once per epoch
    # rank 0 alone wrote the config and spec into the checkpoint, and they build the model it was trained as
    from recsys_mtl.evaluate.loading import load_model

    loaded = load_model(tmp_path / "two" / "checkpoints")
    assert loaded.step == 12 and loaded.config.sharding.tables["user"] == "row_wise"

    # 2 processes stopped mid-epoch and resumed by 2 end like the straight 2-process run (equal weighting has an
    # empty state: it once made every multi-process resume fail in DCP's load)
    resumed = tmp_path / "two_resumed"
    run_ok(train_cmd(parquet, resumed, f"data.batch_size={ROW_GROUP}", *common, "train.max_steps=5", nproc=2))
    log = run_ok(train_cmd(parquet, resumed, f"data.batch_size={ROW_GROUP}", *common, nproc=2))
    assert "resumed from" in log and "step-00000005" in log
    assert steps(resumed) == two
    a, b = final_state(tmp_path / "two"), final_state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # 1 process cannot take over 2 processes' data positions: refused before any tensor loads, saying what to do
    proc = subprocess.run(train_cmd(parquet, resumed, f"data.batch_size={ROW_GROUP}", *common, "train.epochs=3"),
                          env=env(), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "written by 2 process(es) and this run has 1" in proc.stderr and "--nproc 2" in proc.stderr
    # optimizers without state (SGD) put empty dicts in the state, which DCP saves as nothing: a 2-process resume
    # (where a table-wise table's optimizer state is on one rank only) once failed on them
    sgd = tmp_path / "sgd"
    opts = (f"data.batch_size={ROW_GROUP}", *common, "optim.embedding.type=sgd", "optim.dense.type=sgd")
    run_ok(train_cmd(parquet, sgd, *opts, "train.max_steps=3", nproc=2))
    log = run_ok(train_cmd(parquet, sgd, *opts, "train.max_steps=4", nproc=2))
    assert "resumed from" in log and [s["step"] for s in steps(sgd)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(parquet, tmp_path):
    overrides = ("train.epochs=8", "train.checkpoint.every=5", "data.shuffle=true", "model.dropout=0.1")
    run_ok(train_cmd(parquet, tmp_path / "straight", *overrides))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(parquet, killed, *overrides), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 180
    while not (latest.exists() and latest.read_text().strip() >= "step-00000010"):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(steps(killed)) < 48  # it really was cut short

    run_ok(train_cmd(parquet, killed, *overrides))
    assert steps(killed) == steps(tmp_path / "straight")
    a, b = final_state(tmp_path / "straight"), final_state(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_a_second_run_in_a_busy_output_dir_is_refused_and_killing_the_launcher_stops_its_workers(parquet, tmp_path):
    from recsys_mtl.config.loader import ConfigError
    from recsys_mtl.train.lock import OutputDirLock

    out = tmp_path / "busy"
    # its own session: the SIGKILL below hits the launcher alone, as `kill -9 PID` does
    launcher = subprocess.Popen(train_cmd(parquet, out, "train.epochs=1000", "tracking.enabled=false", nproc=2),
                                env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not ((out / TRAIN_LOG).exists() and (out / TRAIN_LOG).stat().st_size > 0):
            assert launcher.poll() is None, "the run ended before it trained"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(_processes_mentioning(str(out))) == 3  # the launcher (torchrun's agent) and 2 workers

        second = subprocess.run(train_cmd(parquet, out, "tracking.enabled=false"), env=env(), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another training (pid" in second.stderr, second.stderr[-2000:]

        launcher.send_signal(signal.SIGKILL)
        assert launcher.wait() == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while _processes_mentioning(str(out)):  # the workers die with their launcher
            assert time.monotonic() < deadline, "workers outlived their launcher"
            time.sleep(0.1)
        while True:  # and the folder is free again (an exiting process drops its files after its cmdline)
            try:
                OutputDirLock(out).acquire().release()
                break
            except ConfigError:
                assert time.monotonic() < deadline, "the output_dir stayed locked"
                time.sleep(0.1)
    finally:
        for pid in _processes_mentioning(str(out)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_error_found_inside_the_nproc_workers_exits_2_with_the_message_and_no_traceback(parquet, tmp_path):
    import yaml

    spec = yaml.safe_load((parquet / "_feature_spec.yaml").read_text())
    spec["tables"]["user"]["num_embeddings"] = 3_000_000_000  # known only once the workers plan the sharding
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(spec))
    cmd = train_cmd(parquet, tmp_path / "out", f"data.spec={tmp_path / 'big.yaml'}", "sharding.tables={user: table_wise}",
                    "tracking.enabled=false", nproc=2)
    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "recsys-mtl: error: sharding.tables.user: table 'user'" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum, said, by", [(signal.SIGINT, "interrupted", "Ctrl-C"),
                                              (signal.SIGTERM, "terminated", "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_a_run_with_one_line_and_exit_128_plus_signal_and_it_resumes(parquet, tmp_path, signum,
                                                                                            said, by):
    """The first Ctrl-C (or a scheduler's SIGTERM) stops the run after its step, with a checkpoint there (a
    KeyboardInterrupt raised wherever the signal landed came back wrapped from a DCP save, or was dropped in a
    finaliser and training went on; SIGTERM killed the process where it stood)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(train_cmd(parquet, out, "train.epochs=1000", "train.checkpoint.every=5"), env=env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / "latest").exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert stderr.rstrip().endswith(f"recsys-mtl: {said}") and "Traceback" not in stderr
    stopped = int(re.search(rf"stopped by {by} after step (\d+), which is checkpointed", stderr).group(1))
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:08d}"
    log = run_ok(train_cmd(parquet, out, "train.epochs=1000", "train.checkpoint.every=5",
                           f"train.max_steps={stopped + 2}"))
    assert f"at step {stopped} " in log and len(steps(out)) == stopped + 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_agents(cmd: list[str], timeout: int = 300) -> str:
    """Two torchrun agents (`--nnodes 2`, one process each) on this machine, as two machines would run them."""
    agents = [subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        logs = [a.communicate(timeout=timeout)[1] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    for a, log in zip(agents, logs):
        assert a.returncode == 0, log[-4000:]
    return "\n".join(logs)


@pytest.mark.slow
def test_two_torchrun_agents_with_a_c10d_rendezvous_train_checkpoint_and_resume_like_a_standalone_run(parquet,
                                                                                                     tmp_path):
    """`--nnodes 2 --rdzv-endpoint 127.0.0.1:PORT` run twice (two machines' agents), reading the data through a
    file:// URI: the same steps, checkpoint and resume as `--nproc 2` on one machine from the local path."""
    common = ("train.epochs=1", f"data.batch_size={ROW_GROUP}", "train.checkpoint.every=2")  # 6 steps of 2 x 64 rows
    standalone = tmp_path / "standalone"
    run_ok(train_cmd(parquet, standalone, *common, nproc=2))

    nodes = tmp_path / "nodes"
    launch = ["--nnodes=2", f"--rdzv-endpoint=127.0.0.1:{_free_port()}"]
    cmd = train_cmd(parquet, nodes, *common, f"data.train_path={parquet.resolve().as_uri()}")
    _run_two_agents(cmd + ["--set=train.max_steps=3"] + launch + ["--rdzv-id=first"])
    assert (nodes / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert steps(nodes) == steps(standalone)[:3]
    log = _run_two_agents(cmd + launch + ["--rdzv-id=resumed"])
    assert "resumed from" in log and "step-00000003" in log
    assert len(steps(standalone)) == 6 and steps(nodes) == steps(standalone)
    a, b = final_state(standalone), final_state(nodes)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nnodes_without_a_rendezvous_endpoint_is_a_one_line_error(parquet, tmp_path):
    proc = subprocess.run(train_cmd(parquet, tmp_path / "out") + ["--nnodes=2"], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "recsys-mtl: error: --nnodes > 1 needs --rdzv-endpoint HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr
