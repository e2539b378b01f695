import pytest
import torch
from torch import nn

from recsys_mtl.config.loader import ConfigError, from_dict
from recsys_mtl.config.train import ModelConfig, TrainConfig
from recsys_mtl.losses import masked_bce
from recsys_mtl.models import ARCHITECTURES, MultiTaskModel
from recsys_mtl.models.embedding_init import fill_table_
from recsys_mtl.models.layers import BatchedLinear

from .batches import random_batch, tiny_spec


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_gives_one_logit_per_task_and_trains_every_parameter(architecture, wide):
    spec = tiny_spec(num_tasks=24)
    model = MultiTaskModel(spec, ModelConfig(architecture=architecture, wide=wide))
    batch = random_batch(spec, 32)
    logits = model(batch.dense, batch.sparse)
    assert logits.shape == (32, 24)
    masked_bce(logits, batch.labels, batch.label_mask).losses.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_two_features_share_one_table():
    spec = tiny_spec()
    model = MultiTaskModel(spec, ModelConfig(architecture="shared_bottom"))
    assert sorted(model.ebc.embedding_bags) == ["item", "user"]
    assert model.ebc.embedding_bag_configs()[1].feature_names == ["item_id", "hist_items"]


def test_batched_heads_equal_separate_linear_layers():
    layer = BatchedLinear(groups=5, in_dim=7, out_dim=3)
    x = torch.randn(4, 5, 7)
    expected = torch.stack(
        [nn.functional.linear(x[:, g], layer.weight[g].T, layer.bias[g]) for g in range(5)], dim=1
    )
    torch.testing.assert_close(layer(x), expected)
    shared = torch.randn(4, 7)
    torch.testing.assert_close(layer(shared), layer(shared.unsqueeze(1).expand(-1, 5, -1)))


def test_embedding_init_of_a_block_equals_that_block_of_the_whole_table():
    whole = torch.empty(50, 8)
    fill_table_(whole, seed=3, table=1, num_embeddings=50)
    block = torch.empty(20, 4)
    fill_table_(block, seed=3, table=1, num_embeddings=50, row_offset=25, col_offset=4)
    torch.testing.assert_close(block, whole[25:45, 4:8], rtol=0, atol=0)
    bound = (1 / 50) ** 0.5
    assert whole.abs().max() <= bound and whole.std() > bound / 3
    other = torch.empty(50, 8)
    fill_table_(other, seed=4, table=1, num_embeddings=50)
    assert not torch.equal(whole, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_embedding_init_on_the_gpu_equals_the_cpu_bit_for_bit():
    cpu = torch.empty(70_000, 8)  # more than one chunk of rows
    fill_table_(cpu, seed=3, table=2, num_embeddings=70_000, row_offset=5, zero_from_col=6)
    gpu = torch.empty(70_000, 8, device="cuda")
    fill_table_(gpu, seed=3, table=2, num_embeddings=70_000, row_offset=5, zero_from_col=6)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


def test_same_seed_same_model_and_another_seed_other_tables():
    """The dense layers come from the global generator (the trainer seeds it); the tables from `seed` alone."""
    spec = tiny_spec()
    models = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        torch.manual_seed(0)
        models[name] = MultiTaskModel(spec, ModelConfig(architecture="ple"), seed=seed).state_dict()
    for n, p in models["a"].items():
        assert torch.equal(p, models["b"][n]), n
    tables = [n for n in models["a"] if n.startswith("ebc.")]
    assert tables and all(not torch.equal(models["a"][n], models["c"][n]) for n in tables)


def test_unknown_architecture_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"model\.architecture: unknown architecture 'mmoee'; set it to one of: mmoe, ple, shared_bottom"):
        from_dict(TrainConfig, {"data": {"train_path": "x", "spec": "y"}, "model": {"architecture": "mmoee"}}, "cfg.yaml")


def test_unknown_sharding_type_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"sharding\.tables\.user: expected one of 'table_wise' \| 'row_wise' \| 'column_wise' \| 'data_parallel', got 'rowwise'"):
        from_dict(TrainConfig, {"data": {"train_path": "x", "spec": "y"}, "sharding": {"tables": {"user": "rowwise"}}}, "cfg.yaml")


def test_wide_columns_start_at_zero_and_hold_one_weight_per_task():
    spec = tiny_spec(num_tasks=6)
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
    weight = model.ebc.embedding_bags["user"].weight
    assert weight.shape == (40, 8 + 8)  # 8 deep columns + 6 task weights rounded up to 8
    assert weight[:, 8:].abs().sum() == 0 and weight[:, :8].abs().sum() > 0
    batch = random_batch(spec, 16)
    with torch.no_grad():
        before = model(batch.dense, batch.sparse)
        user = batch.sparse["user_id"].values()
        weight[user, 8 + 2] += 1.0  # raise task 2's weight for every user in the batch
        after = model(batch.dense, batch.sparse)
    delta = after - before
    torch.testing.assert_close(delta[:, 2], torch.ones(16))
    assert delta[:, [0, 1, 3, 4, 5]].abs().max() < 1e-6


def test_wide_l2_penalty_is_the_mean_over_rows_of_the_squared_wide_weights_looked_up():
    spec = tiny_spec(num_tasks=6)
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True, wide_l2=0.5))
    batch = random_batch(spec, 16)
    with torch.no_grad():
        model.ebc.embedding_bags["user"].weight[:, 8:14] = 0.1  # every user: 0.1 for each of the 6 tasks
        logits, penalty = model.logits_and_wide_l2(batch.dense, batch.sparse)
    # only user_id reads the user table and it is single-valued: each row looks up 6 weights of 0.1
    torch.testing.assert_close(penalty, torch.full((6,), 0.5 * 0.01))  # per task
    torch.testing.assert_close(logits, model(batch.dense, batch.sparse))
    no_l2 = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
    assert no_l2.logits_and_wide_l2(batch.dense, batch.sparse)[1].abs().sum().item() == 0.0


def test_wide_l2_tasks_sets_the_penalty_per_task_and_names_an_unknown_task():
    spec = tiny_spec(num_tasks=6)
    names = spec.task_names
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True, wide_l2=0.5,
                                             wide_l2_tasks={names[1]: 0.0, names[4]: 2.0}))
    batch = random_batch(spec, 16)
    with torch.no_grad():
        model.ebc.embedding_bags["user"].weight[:, 8:14] = 0.1
        penalty = model.logits_and_wide_l2(batch.dense, batch.sparse)[1]
    torch.testing.assert_close(penalty, torch.tensor([0.5, 0.0, 0.5, 0.5, 2.0, 0.5]) * 0.01)
    with pytest.raises(ConfigError, match=r"model\.wide_l2_tasks: unknown task\(s\) \['clicks'\]; the spec's tasks are"):
        MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True, wide_l2_tasks={"clicks": 0.1}))


def test_the_wide_dense_part_starts_at_zero_like_the_wide_id_columns():
    spec = tiny_spec(num_tasks=6)
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
    assert model.wide_dense.weight.abs().sum() == 0 and model.wide_dense.bias.abs().sum() == 0


@pytest.mark.parametrize("model, message", [
    ({"wide_l2": 0.1}, r"model\.wide_l2: is 0\.1 but model\.wide is false; set wide: true or drop wide_l2"),
    ({"wide": True, "wide_l2": -0.1}, r"model\.wide_l2: must be >= 0, got -0\.1"),
    ({"wide_l2_tasks": {"task0": 0.1}}, r"model\.wide_l2_tasks: is set but model\.wide is false"),
    ({"wide": True, "wide_l2_tasks": {"task0": -1.0}}, r"model\.wide_l2_tasks\.task0: must be >= 0, got -1\.0"),
])
def test_wide_l2_needs_the_wide_part_and_a_non_negative_value(model, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {"data": {"train_path": "x", "spec": "y"}, "model": model}, "cfg.yaml")


def test_feature_dropout_zeroes_whole_rows_of_one_feature_in_training_only():
    spec = tiny_spec(num_tasks=6)
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True, feature_dropout={"user_id": 0.5}))
    batch = random_batch(spec, 256)
    with torch.no_grad():
        model.ebc.embedding_bags["user"].weight[:, 8:14] = 1.0  # every user adds 1 to every task's logit
        model.eval()
        full = model(batch.dense, batch.sparse)
        no_user = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
        no_user.load_state_dict(model.state_dict())
        no_user.ebc.embedding_bags["user"].weight.zero_()  # what a dropped row sees: an all-zero user_id
        no_user.eval()
        dropped = no_user(batch.dense, batch.sparse)
        torch.testing.assert_close(model(batch.dense, batch.sparse), full)  # eval: never dropped
        model.train()
        torch.manual_seed(0)
        train = model(batch.dense, batch.sparse)
    is_full = (train - full).abs().amax(dim=1) < 1e-5
    is_dropped = (train - dropped).abs().amax(dim=1) < 1e-5
    assert bool((is_full ^ is_dropped).all())  # each row keeps or loses the whole feature (deep and wide)
    assert 0.35 < is_dropped.float().mean() < 0.65


@pytest.mark.parametrize("model, message", [
    ({"feature_dropout": {"user_id": 1.0}}, r"model\.feature_dropout\.user_id: must be in \[0, 1\), got 1\.0"),
    ({"feature_dropout": {"user_id": -0.1}}, r"model\.feature_dropout\.user_id: must be in \[0, 1\), got -0\.1"),
])
def test_feature_dropout_rates_must_be_in_0_1(model, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {"data": {"train_path": "x", "spec": "y"}, "model": model}, "cfg.yaml")


def test_feature_dropout_of_a_feature_the_spec_lacks_is_a_config_error_listing_the_spec_features():
    with pytest.raises(ConfigError, match=r"model\.feature_dropout: unknown sparse feature\(s\) \['userid'\]; "
                                          r"the spec's sparse features are user_id, item_id, hist_items"):
        MultiTaskModel(tiny_spec(), ModelConfig(architecture="mmoe", feature_dropout={"userid": 0.3}))


def test_wide_id_scale_multiplies_one_tasks_wide_id_output():
    spec = tiny_spec(num_tasks=6)
    names = spec.task_names
    batch = random_batch(spec, 64)
    plain = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
    with torch.no_grad():
        for table in plain.ebc.embedding_bags.values():
            table.weight[:, 8:14] = torch.randn_like(table.weight[:, 8:14])  # nonzero wide id weights
    plain.eval()
    no_ids = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True))
    no_ids.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for table in no_ids.ebc.embedding_bags.values():
            table.weight[:, 8:14] = 0.0
    scaled = MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True,
                                              wide_id_scale={names[1]: 3.0, names[4]: 0.0}))
    scaled.load_state_dict(plain.state_dict())
    no_ids.eval(), scaled.eval()
    with torch.no_grad():
        base, ids = no_ids(batch.dense, batch.sparse), plain(batch.dense, batch.sparse)
        factor = torch.tensor([1.0, 3.0, 1.0, 1.0, 0.0, 1.0])
        torch.testing.assert_close(scaled(batch.dense, batch.sparse), base + (ids - base) * factor)
    with pytest.raises(ConfigError, match=r"model\.wide_id_scale: unknown task\(s\) \['clicks'\]; the spec's tasks are"):
        MultiTaskModel(spec, ModelConfig(architecture="mmoe", wide=True, wide_id_scale={"clicks": 2.0}))


@pytest.mark.parametrize("model, message", [
    ({"wide_id_scale": {"task0": 2.0}}, r"model\.wide_id_scale: is set but model\.wide is false"),
    ({"wide": True, "wide_id_scale": {"task0": -1.0}}, r"model\.wide_id_scale\.task0: must be >= 0, got -1\.0"),
])
def test_wide_id_scale_needs_the_wide_part_and_a_non_negative_value(model, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {"data": {"train_path": "x", "spec": "y"}, "model": model}, "cfg.yaml")
