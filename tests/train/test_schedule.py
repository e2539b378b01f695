"""optim.schedule: warmup and decay of both optimizers' learning rates."""

import json
import math
import shutil

from recsys_mtl.config.train import ScheduleConfig
from recsys_mtl.train import Trainer
from recsys_mtl.train.schedule import lr_factor
from recsys_mtl.train.trainer import TRAIN_LOG

from tests.models.batches import ListSource, rank_batches, tiny_spec
from tests.train.helpers import tiny_config

SGD = {"embedding": {"type": "sgd", "lr": 0.1}, "dense": {"type": "sgd", "lr": 0.1}}


def test_factor_warms_up_then_decays_to_the_floor():
    linear = ScheduleConfig(warmup_steps=2, decay="linear", min_lr_ratio=0.1)
    assert [round(lr_factor(s, 6, linear), 6) for s in range(7)] == [0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1]
    cosine = ScheduleConfig(decay="cosine")
    assert [round(lr_factor(s, 4, cosine), 6) for s in range(5)] == [1.0, round(0.5 + 0.5 * math.cos(math.pi / 4), 6),
                                                                     0.5, round(0.5 - 0.5 * math.cos(math.pi / 4), 6), 0.0]
    assert lr_factor(100, 4, cosine) == 0.0  # past the plan: stays at the floor
    assert lr_factor(3, 10, ScheduleConfig()) == 1.0


def _weights(trainer):
    state = trainer.dmp.state_dict()
    emb = state["model.ebc.embedding_bags.user.weight"]
    emb = emb.local_shards()[0].tensor if hasattr(emb, "local_shards") else emb
    return emb.clone(), state["model.dense_tower.0.weight"].clone()


def test_the_schedule_reaches_the_fused_embedding_and_the_dense_optimizer(tmp_path):
    """A warmup far longer than the run keeps every learning rate near 0: neither part may move."""
    spec = tiny_spec()
    batches = rank_batches(spec, 3, 16, 1, 0)
    moved = {}
    for name, schedule in (("constant", {}), ("frozen", {"warmup_steps": 10**9})):
        trainer = Trainer(tiny_config(tmp_path / name, optim={**SGD, "schedule": schedule}), spec=spec,
                          train_data=ListSource(batches))
        before = _weights(trainer)
        trainer.fit()
        moved[name] = [float((a - b).abs().max()) for a, b in zip(_weights(trainer), before)]
    assert min(moved["constant"]) > 1e-4
    assert max(moved["frozen"]) < 1e-7


def test_a_resume_mid_schedule_continues_the_same_schedule(tmp_path):
    spec = tiny_spec()
    batches = rank_batches(spec, 4, 16, 1, 0)
    optim = {**SGD, "schedule": {"warmup_steps": 2, "decay": "cosine"}}
    train = {"epochs": 2, "checkpoint": {"every": 1, "keep": 10}}
    Trainer(tiny_config(tmp_path, optim=optim, train=train), spec=spec, train_data=ListSource(batches)).fit()
    full = (tmp_path / TRAIN_LOG).read_text().splitlines()
    checkpoints = tmp_path / "checkpoints"
    for later in sorted(checkpoints.glob("step-*"))[3:]:  # as if killed after step 3
        shutil.rmtree(later)
    (checkpoints / "latest").unlink(missing_ok=True)
    Trainer(tiny_config(tmp_path, optim=optim, train=train), spec=spec, train_data=ListSource(batches)).fit()
    resumed = (tmp_path / TRAIN_LOG).read_text().splitlines()
    assert [json.loads(r)["step"] for r in resumed] == list(range(1, 9))
    assert resumed == full
