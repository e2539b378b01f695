"""The cascade's derived logits: p = product of the chain's head probabilities, a stable loss, every architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import from_dict
from recsys_mtl.config.train import ModelConfig
from recsys_mtl.models.cascade import TaskCascade, product_logits
from recsys_mtl.models.multitask import MultiTaskModel
from recsys_mtl.train.train_module import MultiTaskTrainModule
from recsys_mtl.weighting import build_weighting
from tests.models.batches import random_batch


def cascade_spec(child_loss: bool = True) -> FeatureSpec:
    return from_dict(FeatureSpec, {
        "name": "tiny_cascade",
        "tables": {"user": {"num_embeddings": 40, "embedding_dim": 8}, "item": {"num_embeddings": 30, "embedding_dim": 8}},
        "sparse": [{"name": "user_id", "table": "user"}, {"name": "item_id", "table": "item"}],
        "dense": [{"name": "d0"}, {"name": "d1"}],
        "tasks": [{"name": "click"}, {"name": "like"}, {"name": "cart", "depends_on": "click", "child_loss": child_loss},
                  {"name": "buy", "depends_on": "cart"}],
    }, "cascade_spec")


def test_product_logit_is_the_logit_of_the_product_of_the_chains_probabilities():
    heads = torch.randn(64, 3, dtype=torch.float64) * 4
    paths = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    p = torch.sigmoid(product_logits(heads, paths))
    s = torch.sigmoid(heads)
    torch.testing.assert_close(p, torch.stack([s[:, 0] * s[:, 1], s[:, 0] * s[:, 1] * s[:, 2]], dim=1))


def test_the_product_loss_is_finite_with_finite_gradients_at_saturated_heads():
    heads = torch.tensor([[200.0, 200.0], [-200.0, -200.0], [200.0, -200.0], [50.0, 30.0]], requires_grad=True)
    for y in (0.0, 1.0):
        logits = product_logits(heads, torch.ones(1, 2))
        loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, y))
        (grad,) = torch.autograd.grad(loss, heads)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # -log p exactly where p is representable: BCE on the product logit with label 1 is -(logsig(a) + logsig(b))
    a = torch.tensor([[-3.0, 2.0]])
    torch.testing.assert_close(F.binary_cross_entropy_with_logits(product_logits(a, torch.ones(1, 2)), torch.ones(1, 1)),
                               -(F.logsigmoid(a).sum()))


@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
@pytest.mark.parametrize("wide", [False, True])
def test_every_architecture_outputs_the_heads_then_the_products(architecture, wide):
    spec = cascade_spec()
    assert spec.task_names == ["click", "like", "cart", "buy", "click_cart", "cart_buy"]
    model = MultiTaskModel(spec, ModelConfig(architecture=architecture, wide=wide), seed=0)
    batch = random_batch(spec, 32)
    logits, penalty = model.logits_and_wide_l2(batch.dense, batch.sparse)
    assert logits.shape == (32, 6) and penalty.shape == (6,) and model.heads.bias.shape[0] == 4
    p = torch.sigmoid(logits)
    torch.testing.assert_close(p[:, 4], p[:, 0] * p[:, 2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p[:, 5], p[:, 0] * p[:, 2] * p[:, 3], atol=1e-6, rtol=1e-5)


def test_the_products_loss_trains_the_parent_and_child_heads_and_the_weighting_sees_every_task():
    spec = cascade_spec()
    model = MultiTaskModel(spec, ModelConfig(architecture="mmoe"), seed=0)
    module = MultiTaskTrainModule(model, build_weighting("go4align", spec.num_tasks, num_groups=2))
    batch = random_batch(spec, 64)
    only_product = batch.label_mask.clone()
    only_product[:, :4] = False  # the heads' own labels off: any head gradient comes through the products
    batch.label_mask = only_product
    loss, (losses, logits, weights) = module(batch)
    assert losses.shape == weights.shape == (6,)
    loss.backward()
    grad = model.heads.weight.grad.abs().sum(dim=tuple(range(1, model.heads.weight.grad.dim())))
    assert grad[[0, 2, 3]].gt(0).all() and grad[1] == 0  # click, cart, buy through the products; like not at all


def test_child_loss_false_leaves_the_childs_own_labels_out_of_the_loss():
    spec = cascade_spec(child_loss=False)
    assert spec.loss_tasks == [True, True, False, True, True, True]
    model = MultiTaskModel(spec, ModelConfig(architecture="shared_bottom"), seed=0)
    module = MultiTaskTrainModule(model, build_weighting("equal", spec.num_tasks))
    batch = random_batch(spec, 64)
    _, (losses, _, weights) = module(batch)
    assert losses[2] == 0 and weights[2] == 0 and losses[[0, 1, 3, 4, 5]].gt(0).all()


def test_task_cascade_module_has_no_state_in_the_checkpoint():
    cascade = TaskCascade(["a", "b"], {"a_b": ["a", "b"]})
    assert dict(cascade.state_dict()) == {} and cascade(torch.zeros(3, 2)).shape == (3, 3)
