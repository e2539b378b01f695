"""Single-process trainer behaviour on in-memory batches."""

import dataclasses
import json
import os
import signal

import pytest
import torch

from recsys_mtl.config.loader import ConfigError
from recsys_mtl.losses import masked_bce
from recsys_mtl.train import Trainer
from recsys_mtl.train.checkpoint import CheckpointMismatchError
from recsys_mtl.train.trainer import TRAIN_LOG
from recsys_mtl.weighting import WeightingMethod
from recsys_mtl.weighting.famo import FAMO

from tests.models.batches import ListSource, random_batch, rank_batches, tiny_spec
from tests.train.helpers import tiny_config


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]


def test_trainer_logs_every_step_and_evaluates_each_epoch(tmp_path, caplog):
    spec = tiny_spec()
    cfg = tiny_config(tmp_path, train={"epochs": 2})
    trainer = Trainer(cfg, spec=spec, train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)),
                      eval_data=ListSource(rank_batches(spec, 2, 16, 1, 0, seed=5)))
    with caplog.at_level("INFO", logger="recsys_mtl"):
        result = trainer.fit()
    assert result.steps == 8 and result.epochs_completed == 2
    records = logged(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(len(r["losses"]) == spec.num_tasks for r in records)
    # rank_batches leaves task 5 unlabelled on steps 1, 4, 7: weight 0, loss 0
    assert records[0]["weights"][5] == 0.0 and records[0]["losses"][5] == 0.0
    eval_lines = [r.message for r in caplog.records if r.message.startswith("eval step")]
    assert len(eval_lines) == 2 and "mean AUC" in eval_lines[0] and "task0=" in eval_lines[0]
    assert [line.split(":")[0] for line in eval_lines] == ["eval step 4 (epoch 1/2)", "eval step 8 (epoch 2/2)"]
    assert set(result.eval_metrics) == set(spec.task_names)


def test_pipeline_losses_equal_a_plain_forward_backward_loop(tmp_path):
    """TrainPipelineSparseDist overlaps input dist with compute; it must not change the math."""
    spec = tiny_spec()
    batches = rank_batches(spec, 5, 16, 1, 0)
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, spec=spec, train_data=ListSource(batches))
    trainer.fit()
    piped = [r["losses"] for r in logged(tmp_path)]

    plain = Trainer(tiny_config(tmp_path / "plain"), spec=spec, train_data=ListSource(batches))
    plain.init_head_bias()  # what fit() does first
    losses = []
    for batch in batches:
        plain.optimizer.zero_grad()
        loss, (task_losses, _, _) = plain.dmp(batch)
        loss.backward()
        plain.optimizer.step()
        losses.append(task_losses.tolist())
    torch.testing.assert_close(torch.tensor(piped), torch.tensor(losses), rtol=1e-6, atol=1e-7)


def test_evaluation_mid_epoch_leaves_training_losses_unchanged(tmp_path, caplog):
    """Eval detaches the pipeline with batches in flight and re-attaches it."""
    spec = tiny_spec()
    batches = rank_batches(spec, 6, 16, 1, 0)
    evals = rank_batches(spec, 2, 16, 1, 0, seed=9)
    a = Trainer(tiny_config(tmp_path / "a"), spec=spec, train_data=ListSource(batches))
    a.fit()
    b = Trainer(tiny_config(tmp_path / "b", train={"eval_every": 2}), spec=spec, train_data=ListSource(batches),
                eval_data=ListSource(evals))
    with caplog.at_level("INFO", logger="recsys_mtl"):
        b.fit()
    assert [r["losses"] for r in logged(tmp_path / "a")] == [r["losses"] for r in logged(tmp_path / "b")]
    heads = [r.message.split(":")[0] for r in caplog.records if r.message.startswith("eval step")]
    assert heads == ["eval step 2 (epoch 0.33/1)", "eval step 4 (epoch 0.67/1)", "eval step 6 (epoch 1/1)"]


def test_sharding_types_train_identically(tmp_path):
    """Forced table-wise, row-wise (on CPU) and column-wise give the same losses; the plan shows them."""
    spec = tiny_spec()
    batches = rank_batches(spec, 3, 16, 1, 0)
    runs = {}
    for kind in ("table_wise", "row_wise", "column_wise"):
        cfg = tiny_config(tmp_path / kind, sharding={"tables": {"user": kind, "item": kind}})
        trainer = Trainer(cfg, spec=spec, train_data=ListSource(batches))
        assert {p.split("/")[0] for p in _plan(trainer).values()} == {kind}
        trainer.fit()
        runs[kind] = torch.tensor([r["losses"] for r in logged(tmp_path / kind)])
    torch.testing.assert_close(runs["row_wise"], runs["table_wise"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(runs["column_wise"], runs["table_wise"], rtol=1e-5, atol=1e-6)


def test_data_parallel_trains_a_table_as_table_wise_under_the_same_sgd(tmp_path):
    """FBGEMM's dense lookup warns that it has no autograd kernel; its gradients are nonetheless right.

    Equal to float rounding: on TorchRec 1.8 (torch 2.13) bit for bit, on TorchRec 1.6.1 (torch 2.11) one element
    of the table is one float32 ulp apart after 4 steps (FBGEMM's fused SGD and torch's SGD round differently).
    A missed or doubled update moves the weights by lr x grad, orders of magnitude over the tolerance."""
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    sgd = {"embedding": {"type": "sgd", "lr": 0.1}, "dense": {"type": "sgd", "lr": 0.1}}
    losses, weights = {}, {}
    for kind in ("table_wise", "data_parallel"):
        trainer = Trainer(tiny_config(tmp_path / kind, sharding={"tables": {"user": kind}}, optim=sgd), spec=spec,
                          train_data=ListSource(batches))
        trainer.fit()
        losses[kind] = torch.tensor([r["losses"] for r in logged(tmp_path / kind)])
        weight = trainer.dmp.state_dict()["model.ebc.embedding_bags.user.weight"]
        weights[kind] = weight.local_shards()[0].tensor if hasattr(weight, "local_shards") else weight
    assert _plan(trainer)["user"] == "data_parallel/dense"
    torch.testing.assert_close(losses["data_parallel"], losses["table_wise"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weights["data_parallel"], weights["table_wise"], rtol=1e-6, atol=1e-7)


def test_data_parallel_table_is_trained_by_the_dense_optimizer(tmp_path):
    spec = tiny_spec()
    cfg = tiny_config(tmp_path, sharding={"tables": {"user": "data_parallel"}})
    trainer = Trainer(cfg, spec=spec, train_data=ListSource(rank_batches(spec, 2, 16, 1, 0)))
    assert _plan(trainer)["user"] == "data_parallel/dense"
    assert any("embedding_bags.user" in k for k in trainer.dense_optimizer.params)
    before = trainer.dmp.state_dict()["model.ebc.embedding_bags.user.weight"].clone()
    trainer.fit()
    assert not torch.equal(before, trainer.dmp.state_dict()["model.ebc.embedding_bags.user.weight"])


def _plan(trainer):
    from recsys_mtl.train.sharding import describe_plan

    return describe_plan(trainer.dmp)


def test_table_too_large_for_its_sharding_says_what_to_change(tmp_path):
    spec = tiny_spec(rows=(4_000_000, 30))  # 4M x 8 floats = 122 MiB (+ row-wise Adagrad state)
    cfg = tiny_config(tmp_path, sharding={"tables": {"user": "table_wise"}, "memory_per_rank_gb": 0.05})
    with pytest.raises(ConfigError, match=r"sharding\.tables\.user: table 'user' \(4000000 x 8.*Use row_wise or column_wise"):
        Trainer(cfg, spec=spec, train_data=ListSource([]))


def test_no_plan_on_one_rank_names_the_largest_tables_and_does_not_advise_splitting_them(tmp_path):
    spec = tiny_spec(rows=(4_000_000, 30))  # user: 4M x 8
    cfg = tiny_config(tmp_path, sharding={"memory_per_rank_gb": 0.05})
    with pytest.raises(ConfigError, match=r"found no plan for 1 rank\(s\).*largest tables: user 0\.\d+ GiB, item .*"
                                          r"one rank holds every table .* raise sharding\.memory_per_rank_gb") as err:
        Trainer(cfg, spec=spec, train_data=ListSource([]))
    assert "row_wise" not in str(err.value).split("Planner said")[0]


def test_a_data_parallel_table_is_sized_with_the_dense_optimizers_state():
    """data_parallel tables train under the dense optimizer: Adam keeps two floats a weight, SGD none."""
    from recsys_mtl.config.train import ShardingConfig
    from recsys_mtl.train.sharding import check_forced_sharding, table_bytes

    spec = tiny_spec(rows=(1000, 30))  # user: 1000 x 8
    config = ShardingConfig(tables={"user": "data_parallel"})
    capacity = table_bytes(1000, 8, "rowwise_adagrad")  # fits with row-wise Adagrad state, not with Adam's
    check_forced_sharding(spec, config, "rowwise_adagrad", 1, capacity, dense_optimizer="sgd")
    with pytest.raises(ConfigError, match=r"table 'user' \(1000 x 8, .* with dense adam state\) needs"):
        check_forced_sharding(spec, config, "rowwise_adagrad", 1, capacity, dense_optimizer="adam")


def test_column_wise_blocks_are_torchrecs():
    sharding_plan = pytest.importorskip("torchrec.distributed.sharding_plan")
    from recsys_mtl.train.sharding import column_wise_blocks

    for dim in range(4, 1025, 4):
        sizes, _ = sharding_plan._calculate_cw_shard_sizes_and_offsets(dim, 10)
        assert column_wise_blocks(dim) == (len(sizes), sizes[0][1]), dim


def test_a_forced_column_wise_table_is_sized_by_torchrecs_blocks_of_at_least_128_columns():
    """A 148-column table stays one block whatever the ranks: column_wise cannot split it (the check used to
    assume 4 shards and let TorchRec's planner fail, advising column_wise)."""
    import dataclasses

    from recsys_mtl.config.train import ShardingConfig
    from recsys_mtl.train.sharding import check_forced_sharding, table_bytes

    def spec_with_user_dim(dim):
        spec = tiny_spec(rows=(100_000, 30))
        user = dataclasses.replace(spec.tables["user"], embedding_dim=dim)
        return dataclasses.replace(spec, tables={**spec.tables, "user": user})

    config = ShardingConfig(tables={"user": "column_wise"})
    quarter = table_bytes(100_000, 128, "adagrad") + 1  # one 128-column block per rank fits, no more
    check_forced_sharding(spec_with_user_dim(512), config, "adagrad", 4, quarter)  # 4 blocks of 128: one a rank
    with pytest.raises(ConfigError, match=r"table 'user' \(100000 x 148.*Use row_wise \(TorchRec splits columns "
                                          r"into blocks of at least 128 .* 1 block\(s\) of 148 for 4 rank\(s\)\)"):
        check_forced_sharding(spec_with_user_dim(148), config, "adagrad", 4, quarter)
    with pytest.raises(ConfigError) as err:  # more ranks cannot help a table that is one block
        check_forced_sharding(spec_with_user_dim(148), config, "adagrad", 4, quarter)
    assert "more ranks" not in str(err.value)


def test_an_empty_wide_id_scale_keeps_the_signature_of_checkpoints_made_before_it_existed(tmp_path):
    from recsys_mtl.train.trainer import model_signature

    spec = tiny_spec()
    plain = model_signature(spec, tiny_config(tmp_path, model={"wide": True}))
    assert "wide_id_scale" not in plain["model"]
    scaled = model_signature(spec, tiny_config(tmp_path, model={"wide": True, "wide_id_scale": {"task0": 3.0}}))
    assert scaled["model"]["wide_id_scale"] == {"task0": 3.0}


def test_unknown_table_in_sharding_overrides_is_named(tmp_path):
    cfg = tiny_config(tmp_path, sharding={"tables": {"users": "row_wise"}})
    with pytest.raises(ConfigError, match=r"sharding\.tables\.users: no table 'users'.*tables are: user, item"):
        Trainer(cfg, spec=tiny_spec(), train_data=ListSource([]))


def test_a_resume_lists_the_settings_changed_since_its_checkpoint(tmp_path, caplog):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    first = tiny_config(tmp_path, train={"max_steps": 2, "checkpoint": {"resume": False}})
    Trainer(first, spec=spec, train_data=ListSource(batches)).fit()
    resumed = tiny_config(tmp_path, train={"seed": 1, "checkpoint": {"resume": True}}, optim={"dense": {"lr": 0.02}})
    with caplog.at_level("INFO", logger="recsys_mtl"):
        Trainer(resumed, spec=spec, train_data=ListSource(batches)).fit()
    [line] = [r.message for r in caplog.records if r.levelname == "WARNING" and "changed" in r.message]
    assert line == ("resumed with 3 setting(s) changed since that checkpoint: optim.dense.lr: 0.01 -> 0.02; "
                    "train.max_steps: 2 -> None; train.seed: 0 -> 1")


def test_static_weights_come_from_the_config_on_resume_and_on_warm_start(tmp_path):
    """They are a setting, not learned state: a resume or warm start with new weights trains with them."""
    spec = tiny_spec()
    T = spec.num_tasks
    batches = rank_batches(spec, 4, 16, 1, 0)
    static = lambda weights: {"method": "static", "args": {"weights": weights}}  # noqa: E731
    Trainer(tiny_config(tmp_path / "a", train={"max_steps": 2}, weighting=static([1.0] * T)), spec=spec,
            train_data=ListSource(batches)).fit()
    new = [float(i + 1) for i in range(T)]
    resumed = Trainer(tiny_config(tmp_path / "a", weighting=static(new)), spec=spec, train_data=ListSource(batches))
    warm = Trainer(tiny_config(tmp_path / "b", weighting=static(new), train={"init_from": str(tmp_path / "a")}),
                   spec=spec, train_data=ListSource(batches))
    for trainer, out in ((resumed, tmp_path / "a"), (warm, tmp_path / "b")):
        trainer.fit()
        assert trainer.weighting.static_weights.tolist() == new
        weights = logged(out)[-1]["weights"]  # 0 for a task with no label in the batch
        assert any(weights) and all(w in (0.0, c) for w, c in zip(weights, new)), weights


def test_a_setting_newer_than_the_checkpoint_is_a_change_only_off_its_default():
    from recsys_mtl.train.trainer import changed_settings

    saved = {"train.epochs": 3}
    assert changed_settings(saved, {"train.epochs": 3, "train.checkpoint.at_end": True}) == []
    assert changed_settings(saved, {"train.epochs": 3, "train.checkpoint.at_end": False}) == [
        "train.checkpoint.at_end: (unset) -> False"]


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    full = Trainer(tiny_config(tmp_path / "full", train={"epochs": 2}), spec=spec, train_data=ListSource(batches))
    full.fit()
    part = tiny_config(tmp_path / "part", train={"epochs": 2, "max_steps": 3})
    Trainer(part, spec=spec, train_data=ListSource(batches)).fit()
    resumed = Trainer(tiny_config(tmp_path / "part", train={"epochs": 2}), spec=spec, train_data=ListSource(batches))
    resumed.fit()
    assert logged(tmp_path / "full") == logged(tmp_path / "part")
    a, b = full.dmp.state_dict(), resumed.dmp.state_dict()
    for key in a:
        x, y = a[key], b[key]
        if hasattr(x, "local_shards"):
            x, y = x.local_shards()[0].tensor, y.local_shards()[0].tensor
        assert torch.equal(x, y), key


def test_a_checkpoint_with_one_rng_key_per_rank_from_before_rng_key_still_resumes_exactly(tmp_path):
    from recsys_mtl.train.checkpoint import RNG_KEY, CheckpointManager, pack, unpack

    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    Trainer(tiny_config(tmp_path / "full", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    part = Trainer(tiny_config(tmp_path / "part", train={"epochs": 2, "max_steps": 3}), spec=spec,
                   train_data=ListSource(batches))
    part.fit()
    path = part.checkpoints.latest()
    state = part._checkpoint_state()
    part.checkpoints.load(path, state, part.signature)
    state["train_state"] = pack(unpack(state["train_state"]))
    state["rng_rank0"] = pack(unpack(state.pop(RNG_KEY))[0])  # the layout before RNG_KEY
    part.checkpoints.save(3, state, part.signature)
    assert not CheckpointManager.has_key(path, RNG_KEY) and CheckpointManager.has_key(path, "rng_rank0")
    Trainer(tiny_config(tmp_path / "part", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "full") == logged(tmp_path / "part")


def test_a_fresh_run_in_a_used_output_dir_replaces_the_earlier_runs_checkpoints_at_its_first_save(tmp_path, caplog):
    """Rotation keeps the highest step numbers: with the earlier run's step-8 and step-6 still there, a fresh
    4-step run used to delete its own checkpoints and leave `latest` naming a deleted folder."""
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    ckpts = tmp_path / "checkpoints"
    every2 = {"every": 2, "keep": 2}
    Trainer(tiny_config(tmp_path, train={"epochs": 2, "checkpoint": every2}), spec=spec,
            train_data=ListSource(batches)).fit()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000006", "step-00000008"]

    fresh = Trainer(tiny_config(tmp_path, train={"epochs": 1, "checkpoint": {**every2, "resume": False}}), spec=spec,
                    train_data=ListSource(batches))
    saved = fresh.save_checkpoint

    def save_then_check():
        path = saved()
        # the earlier run's checkpoints go only once this run's first one is in place
        assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002"]
        fresh.save_checkpoint = saved
        return path

    fresh.save_checkpoint = save_then_check
    with caplog.at_level("WARNING", logger="recsys_mtl.train.trainer"):
        fresh.fit()
    assert "holds 2 checkpoint(s) of an earlier run (newest step-00000008)" in caplog.text
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000004"]
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    assert fresh.checkpoints.latest() == ckpts / "step-00000004"

    # a fresh run that died after its first save but before removing the earlier run's checkpoints: its resume
    # continues from `latest`, and its next save removes the higher steps it did not write
    import shutil
    shutil.copytree(ckpts / "step-00000004", ckpts / "step-00000009")
    (ckpts / "latest").write_text("step-00000004\n")
    resumed = Trainer(tiny_config(tmp_path, train={"epochs": 2, "checkpoint": every2}), spec=spec,
                      train_data=ListSource(batches))
    resumed.fit()
    assert resumed.resumed_from_step == 4
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000006", "step-00000008"]


class EvalSteps:
    """Records the steps of each evaluation a trainer reports."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_start(self, trainer) -> None: ...
    def on_log(self, trainer, records) -> None: ...
    def on_train_metrics(self, trainer, step, metrics) -> None: ...
    def on_train_end(self, trainer, result) -> None: ...

    def on_eval(self, trainer, step, epoch, metrics) -> None:
        self.steps.append(step)


def test_each_step_is_evaluated_once_across_a_resume_and_a_rerun_of_the_finished_training(tmp_path, caplog):
    spec = tiny_spec()
    batches, held_out = rank_batches(spec, 4, 16, 1, 0), rank_batches(spec, 2, 16, 1, 0, seed=5)

    def run(out, callback, **train):
        cfg = tiny_config(out, train={"epochs": 2, "checkpoint": {"every": 4}, **train})
        return Trainer(cfg, spec=spec, train_data=ListSource(batches), eval_data=ListSource(held_out),
                       callbacks=[callback]).fit()

    full = run(tmp_path / "full", EvalSteps())
    seen = EvalSteps()
    run(tmp_path / "part", seen, max_steps=4)  # stops at the end of epoch 1, which is evaluated and checkpointed
    resumed = run(tmp_path / "part", seen)
    assert seen.steps == [4, 8]  # epoch 1's evaluation is in its checkpoint: not run again on resume
    assert resumed.eval_metrics == full.eval_metrics
    with caplog.at_level("INFO", logger="recsys_mtl"):
        rerun = run(tmp_path / "part", seen)  # e.g. a scheduler retrying a job that had finished
    assert seen.steps == [4, 8] and rerun.steps == 8
    assert rerun.eval_metrics == full.eval_metrics  # reported from the checkpoint
    assert any("already finished at step 8" in r.message for r in caplog.records)


def test_a_crash_while_saving_keeps_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    cfg = tiny_config(tmp_path, train={"checkpoint": {"every": 2}, "max_steps": 2})
    Trainer(cfg, spec=spec, train_data=ListSource(batches)).fit()
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step-00000002"

    import recsys_mtl.train.checkpoint as checkpoint

    real_save = checkpoint.dcp.save

    def save_then_crash(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # the shards are written, the commit never happens
        raise KeyboardInterrupt("killed while saving")

    cfg = tiny_config(tmp_path, train={"checkpoint": {"every": 2}, "max_steps": 4})
    trainer = Trainer(cfg, spec=spec, train_data=ListSource(batches))
    monkeypatch.setattr(checkpoint.dcp, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert (ckpt / "latest").read_text().strip() == "step-00000002"
    assert (ckpt / ".tmp-step-00000004").exists()  # the half-finished save is left aside, never read
    again = Trainer(cfg, spec=spec, train_data=ListSource(batches))
    assert again.maybe_resume() and again.step == 2


def test_checkpoint_of_another_model_shape_names_the_difference(tmp_path):
    spec = tiny_spec()
    Trainer(tiny_config(tmp_path, train={"max_steps": 1}), spec=spec,
            train_data=ListSource(rank_batches(spec, 2, 16, 1, 0))).fit()
    bigger = tiny_spec(rows=(80, 30))
    trainer = Trainer(tiny_config(tmp_path), spec=bigger, train_data=ListSource(rank_batches(bigger, 2, 16, 1, 0)))
    with pytest.raises(CheckpointMismatchError, match=r"tables\.user: checkpoint has \[40, 8\], this config has \[80, 8\](.|\n)*resume: false"):
        trainer.fit()



def test_a_checkpoint_trained_with_feature_dropout_and_wide_l2_loads_into_a_config_without_them(tmp_path):
    spec = tiny_spec()
    trained = {"wide": True, "wide_l2": 0.1, "feature_dropout": {"user_id": 0.3}}
    Trainer(tiny_config(tmp_path, model=trained, train={"max_steps": 1}), spec=spec,
            train_data=ListSource(rank_batches(spec, 2, 16, 1, 0))).fit()
    serving = Trainer(tiny_config(tmp_path, model={"wide": True}), spec=spec,
                      train_data=ListSource(rank_batches(spec, 2, 16, 1, 0)))
    assert serving.maybe_resume() and serving.step == 1

class PostStepRecorder(WeightingMethod):
    """Registered per test (monkeypatch), so the global registry stays as the product ships it."""

    name = "_test_post_step"
    needs_post_step_losses = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.after: list[torch.Tensor] = []

    def compute(self, losses, present):
        return present.to(losses.dtype)

    def post_step(self, losses_after, present=None):
        self.calls += 1
        self.after.append(losses_after.clone())


def test_post_step_weighting_gets_the_same_batch_losses_after_the_update(tmp_path, monkeypatch):
    from recsys_mtl.weighting import base

    monkeypatch.setitem(base._REGISTRY, "_test_post_step", PostStepRecorder)
    spec = tiny_spec()
    batches = rank_batches(spec, 3, 16, 1, 0)
    trainer = Trainer(tiny_config(tmp_path, weighting={"method": "_test_post_step"}), spec=spec,
                      train_data=ListSource(batches))
    trainer.fit()
    assert int(trainer.weighting.calls) == 3
    before = torch.tensor(logged(tmp_path)[0]["losses"])
    after = trainer.weighting.after[0]
    # the update lowered the first batch's losses on the tasks it had labels for
    assert (after.sum() < before.sum()) and after.shape == before.shape


class RecordingFAMO(FAMO):
    """FAMO that records what the trainer hands it (registered per test)."""

    def __init__(self, num_tasks: int, lr: float = 0.025) -> None:
        super().__init__(num_tasks, lr=lr)
        self.seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def compute(self, losses, present):
        self.seen.append(("compute", losses.clone(), present.clone()))
        return super().compute(losses, present)

    def post_step(self, losses_after, present=None):
        self.seen.append(("post_step", losses_after.clone(), present.clone()))
        super().post_step(losses_after, present)


def test_famo_in_the_trainer_updates_its_logits_like_famo_driven_by_hand(tmp_path, monkeypatch):
    """The after-step losses are computed without calling the weighting: a second compute() used to overwrite
    FAMO's before-step losses, so delta was 0 and its logits never moved (inverse-loss weights)."""
    from recsys_mtl.weighting import base

    monkeypatch.setitem(base._REGISTRY, "_test_famo", RecordingFAMO)
    spec = tiny_spec()
    trainer = Trainer(tiny_config(tmp_path, weighting={"method": "_test_famo", "args": {"lr": 0.5}}), spec=spec,
                      train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)))
    trainer.fit()
    seen = trainer.weighting.seen
    assert [kind for kind, _, _ in seen] == ["compute", "post_step"] * 4
    by_hand = FAMO(spec.num_tasks, lr=0.5)
    for kind, losses, present in seen:
        by_hand.compute(losses, present) if kind == "compute" else by_hand.post_step(losses, present)
    assert by_hand.logits.abs().min() > 0
    torch.testing.assert_close(trainer.weighting.logits, by_hand.logits, rtol=0, atol=0)


@pytest.mark.parametrize("head_bias", ["zero", "prior"])
def test_head_bias_is_set_before_the_first_step(tmp_path, head_bias):
    class BiasAtStart(EvalSteps):
        def on_train_start(self, trainer) -> None:
            self.bias = trainer.module.model.heads.bias.detach().clone().flatten()

    spec = tiny_spec()
    seen = BiasAtStart()
    trainer = Trainer(tiny_config(tmp_path, model={"head_bias": head_bias}, train={"max_steps": 1}), spec=spec,
                      train_data=ListSource(rank_batches(spec, 2, 16, 1, 0)), callbacks=[seen])
    random_init = trainer.module.model.heads.bias.detach().clone().flatten()
    assert (random_init != 0).all()
    trainer.fit()
    if head_bias == "zero":
        assert (seen.bias == 0).all()
    else:  # the label rates' log-odds (test_heads_start_at_each_tasks_label_rate)
        assert not torch.equal(seen.bias, random_init)


def test_heads_start_at_each_tasks_label_rate(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    trainer = Trainer(tiny_config(tmp_path, train={"max_steps": 1}), spec=spec, train_data=ListSource(batches))
    trainer.init_head_bias()
    labels = torch.cat([b.labels for b in batches])
    mask = torch.cat([b.label_mask for b in batches])
    rate = (labels * mask).sum(0) / mask.sum(0)
    bias = trainer.module.model.heads.bias.detach().flatten()
    torch.testing.assert_close(torch.sigmoid(bias), rate, rtol=1e-4, atol=1e-6)


def test_a_task_past_its_task_epochs_trains_with_no_loss_and_no_weight(tmp_path):
    spec = tiny_spec()
    cfg = tiny_config(tmp_path, train={"epochs": 3, "task_epochs": {"task0": 1, "task3": 2}})
    Trainer(cfg, spec=spec, train_data=ListSource(rank_batches(spec, 2, 16, 1, 0))).fit()
    by_epoch = {e: [r for r in logged(tmp_path) if r["epoch"] == e] for e in range(3)}
    assert all(r["weights"][0] > 0 and r["weights"][3] > 0 for r in by_epoch[0])
    assert all(r["weights"][0] == 0 and r["losses"][0] == 0 and r["weights"][3] > 0 for r in by_epoch[1])
    assert all(r["weights"][0] == 0 and r["weights"][3] == 0 and r["weights"][1] > 0 for r in by_epoch[2])


def test_task_epochs_naming_an_unknown_task_lists_the_spec_tasks(tmp_path):
    spec = tiny_spec()
    with pytest.raises(ConfigError, match=r"train\.task_epochs: unknown task\(s\) \['clicks'\]; the spec's tasks are task0, "):
        Trainer(tiny_config(tmp_path, train={"epochs": 2, "task_epochs": {"clicks": 1}}), spec=spec,
                train_data=ListSource(rank_batches(spec, 2, 16, 1, 0)))


@pytest.mark.parametrize("n", [0, -1])
def test_task_epochs_below_one_is_a_config_error_naming_the_task(tmp_path, n):
    with pytest.raises(ConfigError, match=rf"train\.task_epochs\.task0: must be >= 1 \(epochs of training\), got {n}"):
        tiny_config(tmp_path, train={"epochs": 2, "task_epochs": {"task0": n}})


def test_task_epochs_beyond_the_run_s_epochs_train_every_epoch(tmp_path):
    spec = tiny_spec()
    cfg = tiny_config(tmp_path, train={"epochs": 2, "task_epochs": {"task0": 5}})
    Trainer(cfg, spec=spec, train_data=ListSource(rank_batches(spec, 2, 16, 1, 0))).fit()
    assert all(r["weights"][0] > 0 for r in logged(tmp_path))


def test_wide_l2_trains_through_the_pipeline_and_shrinks_the_wide_weights(tmp_path):
    spec = tiny_spec()
    norms = {}
    for l2 in (0.0, 1.0):
        cfg = tiny_config(tmp_path / str(l2), model={"wide": True, "wide_l2": l2}, train={"epochs": 3})
        trainer = Trainer(cfg, spec=spec, train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)))
        trainer.fit()
        state = trainer.module.model.state_dict()
        norms[l2] = sum(float(state[k].local_shards()[0].tensor[:, 8:].norm() if hasattr(state[k], "local_shards")
                              else state[k][:, 8:].norm()) for k in ("ebc.embedding_bags.user.weight",))
    assert 0 < norms[1.0] < norms[0.0]


def test_wide_lr_puts_the_wide_dense_weights_in_their_own_param_group_and_resumes_exactly(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    conf = {"model": {"wide": True}, "optim": {"dense": {"type": "adam", "lr": 0.01, "wide_lr": 0.1}}}
    full = Trainer(tiny_config(tmp_path / "full", train={"epochs": 2}, **conf), spec=spec, train_data=ListSource(batches))
    groups = full.dense_optimizer._optimizer.param_groups
    wide = [p for p in full.module.model.wide_dense.parameters()]
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in wide}
    full.fit()
    assert all(p.abs().sum() > 0 for p in wide)  # trained away from their zero start
    Trainer(tiny_config(tmp_path / "part", train={"epochs": 2, "max_steps": 3}, **conf), spec=spec,
            train_data=ListSource(batches)).fit()
    Trainer(tiny_config(tmp_path / "part", train={"epochs": 2}, **conf), spec=spec, train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "full") == logged(tmp_path / "part")
    slow = {**conf, "optim": {"dense": {"type": "adam", "lr": 0.01}}}
    Trainer(tiny_config(tmp_path / "slow", train={"epochs": 2}, **slow), spec=spec, train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "slow") != logged(tmp_path / "full")


def test_feature_dropout_trains_through_the_pipeline_and_resumes_exactly(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    model = {"wide": True, "feature_dropout": {"user_id": 0.5}}
    full = Trainer(tiny_config(tmp_path / "full", model=model, train={"epochs": 2}), spec=spec,
                   train_data=ListSource(batches))
    full.fit()
    Trainer(tiny_config(tmp_path / "part", model=model, train={"epochs": 2, "max_steps": 3}), spec=spec,
            train_data=ListSource(batches)).fit()
    Trainer(tiny_config(tmp_path / "part", model=model, train={"epochs": 2}), spec=spec,
            train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "full") == logged(tmp_path / "part")  # the dropout masks come from the checkpointed RNG
    no_dropout = {**model, "feature_dropout": {}}
    Trainer(tiny_config(tmp_path / "plain", model=no_dropout, train={"epochs": 2}), spec=spec,
            train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "plain") != logged(tmp_path / "full")


def test_a_task_past_its_task_epochs_keeps_its_wide_weights_under_wide_l2(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    model = {"wide": True, "wide_l2": 1.0}

    def wide_user_weights(trainer):
        w = trainer.module.model.state_dict()["ebc.embedding_bags.user.weight"]
        return (w.local_shards()[0].tensor if hasattr(w, "local_shards") else w)[:, 8:8 + spec.num_tasks].clone()

    task_epochs = {"task0": 1}
    first = Trainer(tiny_config(tmp_path, model=model, train={"epochs": 1, "task_epochs": task_epochs}), spec=spec,
                    train_data=ListSource(batches))
    first.fit()
    rest = Trainer(tiny_config(tmp_path, model=model, train={"epochs": 3, "task_epochs": task_epochs}), spec=spec,
                   train_data=ListSource(batches))
    rest.fit()  # resumes after epoch 1: task0 has no labels from here on
    before, after = wide_user_weights(first), wide_user_weights(rest)
    assert before[:, 0].abs().sum() > 0
    torch.testing.assert_close(after[:, 0], before[:, 0], rtol=0, atol=0)  # the L2 no longer shrinks task0
    assert not torch.equal(after[:, 1], before[:, 1])


def test_compiled_weighting_trains_like_eager_and_keeps_its_state_in_the_checkpoint(tmp_path):
    """weighting.compile runs GO4Align under torch.compile(fullgraph=True) inside the pipeline step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    runs, states = {}, {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        cfg = tiny_config(out, weighting={"method": "go4align", "args": {"num_groups": 2}, "compile": compiled},
                          train={"deterministic": False})
        trainer = Trainer(cfg, spec=spec, train_data=ListSource(batches))
        trainer.fit()
        runs[compiled] = torch.tensor([r["weights"] for r in logged(out)])
        states[compiled] = trainer.weighting.state_dict()
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # compiled once, eager never
    assert runs[True].shape == (4, spec.num_tasks)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-6)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-5, atol=1e-6)


def test_ctrl_c_during_a_save_is_a_keyboard_interrupt_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    """DCP wraps a rank's exception, Ctrl-C included, in a CheckpointException (a traceback and exit 1 from the
    CLI instead of 'interrupted'); the save gives back the KeyboardInterrupt."""
    import torch.distributed.checkpoint.filesystem as dcp_fs

    spec = tiny_spec()
    trainer = Trainer(tiny_config(tmp_path, train={"max_steps": 2}), spec=spec,
                      train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)))
    trainer.fit()
    saved = trainer.checkpoints.latest()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dcp_fs, "_write_item", interrupted)  # the signal arrives while DCP writes an item
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert trainer.checkpoints.latest() == saved
    resumed = Trainer(tiny_config(tmp_path, train={"max_steps": 3}), spec=spec,
                      train_data=ListSource(rank_batches(spec, 4, 16, 1, 0)))
    assert resumed.maybe_resume() and resumed.step == 2


class SignalAtStep(EvalSteps):
    """Sends this process `signum` when step `at` is logged, as a terminal's Ctrl-C (or a scheduler) would."""

    def __init__(self, at: int, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.at, self.signum = at, signum
        self.error: BaseException | None = None

    def on_log(self, trainer, records) -> None:
        if any(r["step"] == self.at for r in records):
            os.kill(os.getpid(), self.signum)

    def on_train_error(self, trainer, exc) -> None:
        self.error = exc


@pytest.mark.parametrize("signum, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path, caplog,
                                                                                               signum, by):
    from recsys_mtl.train.interrupt import Stopped

    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    Trainer(tiny_config(tmp_path / "straight", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell
    stopper = SignalAtStep(3, signum)
    cut = Trainer(tiny_config(tmp_path / "cut", train={"epochs": 2}), spec=spec, train_data=ListSource(batches),
                  callbacks=[stopper])
    with caplog.at_level("WARNING", logger="recsys_mtl.train.trainer"), pytest.raises(KeyboardInterrupt) as stopped:
        cut.fit()
    assert isinstance(stopped.value, Stopped) and stopped.value.signum == signum
    assert stopper.error is stopped.value  # callbacks hear of it (tracking closes the run KILLED)
    assert f"stopped by {by} after step 3, which is checkpointed" in caplog.text
    assert cut.checkpoints.latest().name == "step-00000003"
    assert signal.getsignal(signal.SIGINT) is before  # given back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    Trainer(tiny_config(tmp_path / "cut", train={"epochs": 2}), spec=spec, train_data=ListSource(batches)).fit()
    assert logged(tmp_path / "cut") == logged(tmp_path / "straight")


def test_a_non_finite_loss_stops_the_training_before_a_checkpoint_of_it(tmp_path):
    from recsys_mtl.train.trainer import TrainingDiverged

    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    batches[2] = dataclasses.replace(batches[2], dense=torch.full_like(batches[2].dense, float("nan")))  # a bad source
    stopper = SignalAtStep(at=-1)  # sends nothing; records the error callbacks hear of
    trainer = Trainer(tiny_config(tmp_path, train={"epochs": 2, "log_every": 2, "checkpoint": {"every": 2}}), spec=spec,
                      train_data=ListSource(batches), callbacks=[stopper])
    with pytest.raises(TrainingDiverged, match=r"the training loss is (nan|inf) at step 3 \(non-finite task losses: "
                                               r".*\), found at step 4; training stopped and the newest "
                                               r"checkpoint, step 2, is "
                                               r"from before it. Lower the learning rates") as err:
        trainer.fit()
    assert stopper.error is err.value
    assert [r["step"] for r in logged(tmp_path)] == [1, 2, 3]  # the log ends at the first non-finite step
    assert trainer.checkpoints.latest().name == "step-00000002"


def test_at_end_false_leaves_the_end_of_training_unsaved(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    Trainer(tiny_config(tmp_path / "a", train={"checkpoint": {"at_end": False}}), spec=spec,
            train_data=ListSource(batches)).fit()
    assert not (tmp_path / "a" / "checkpoints").exists() or not any((tmp_path / "a" / "checkpoints").iterdir())
    Trainer(tiny_config(tmp_path / "b", train={"epochs": 2, "checkpoint": {"at_end": False, "every": 3}}), spec=spec,
            train_data=ListSource(batches)).fit()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006"]  # not 8


def test_a_damaged_checkpoint_is_a_clear_error_naming_it(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    Trainer(tiny_config(tmp_path), spec=spec, train_data=ListSource(batches)).fit()
    data_file = next((tmp_path / "checkpoints").glob("step-*/*.distcp"))
    with open(data_file, "r+b") as f:
        f.truncate(100)  # a copy cut short
    resumed = Trainer(tiny_config(tmp_path, train={"epochs": 2}), spec=spec, train_data=ListSource(batches))
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {data_file.parent} could not be loaded .*rank 0: "
                                                      r"\w+Error.*delete that step's folder"):
        resumed.fit()
