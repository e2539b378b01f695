"""Cascades in the spec and the reader: derived product tasks, the child's labels, and bad specs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_mtl.config.features import FeatureSpec
from recsys_mtl.config.loader import ConfigError, to_yaml
from recsys_mtl.data.stream import ParquetStream
from tests.data.tiny import tiny_spec, tiny_table

CASCADE = [{"name": "click"}, {"name": "buy", "label": "is_buy", "depends_on": "click"}]


def test_a_dependent_task_adds_a_derived_product_task_after_the_declared_ones(tmp_path):
    spec, _ = tiny_spec(tmp_path, tasks=CASCADE)
    assert spec.task_names == ["click", "buy", "click_buy"]
    assert spec.num_heads == 2 and spec.num_tasks == 3 and spec.task_types == ["binary"] * 3
    assert spec.cascade_paths() == {"click_buy": ["click", "buy"]}
    assert "click_buy" not in spec.columns()  # no label column of its own
    assert spec.task_type_signature() == {"cascades": {"buy": "click"}}


def test_product_name_overrides_the_default_and_a_chain_multiplies_every_level(tmp_path):
    tasks = [{"name": "click"}, {"name": "cart", "label": "is_buy", "depends_on": "click", "product_name": "ctcart"},
             {"name": "buy", "label": "row", "depends_on": "cart"}]
    spec, _ = tiny_spec(tmp_path, tasks=tasks)
    assert spec.task_names == ["click", "cart", "buy", "ctcart", "cart_buy"]
    assert spec.cascade_paths() == {"ctcart": ["click", "cart"], "cart_buy": ["click", "cart", "buy"]}


def test_a_spec_written_back_with_its_derived_tasks_loads_to_the_same_spec(tmp_path):
    spec, _ = tiny_spec(tmp_path, tasks=CASCADE)
    path = tmp_path / "again.yaml"
    path.write_text(to_yaml(spec))
    assert FeatureSpec.load(path) == spec


@pytest.mark.parametrize("tasks, message", [
    ([{"name": "click"}, {"name": "buy", "label": "is_buy", "depends_on": "clik"}],
     "tasks[1].depends_on: task 'buy' depends on unknown task 'clik'; the spec's tasks are click, buy"),
    ([{"name": "click", "depends_on": "buy"}, {"name": "buy", "label": "is_buy", "depends_on": "click"}],
     "task 'click': depends_on forms a cycle (click -> buy -> click)"),
    ([{"name": "click", "depends_on": "click"}, {"name": "buy", "label": "is_buy"}],
     "task 'click': depends_on forms a cycle (click -> click)"),
    ([{"name": "click", "type": "regression"}, {"name": "buy", "label": "is_buy", "depends_on": "click"}],
     "task 'buy' depends on 'click', a regression task; a cascade's parent must be binary"),
    ([{"name": "click"}, {"name": "buy", "label": "is_buy", "type": "regression", "depends_on": "click"}],
     "task 'buy' is a regression task: depends_on (a cascade) takes binary tasks only"),
    ([{"name": "click"}, {"name": "click_buy", "label": "row"}, {"name": "buy", "label": "is_buy", "depends_on": "click"}],
     "derived task 'click_buy' (the product of 'click' and 'buy', which depends on it) has the name of another task"),
    ([{"name": "click", "child_loss": False}, {"name": "buy", "label": "is_buy"}],
     "tasks[0].child_loss: task 'click': child_loss applies to a task with depends_on only"),
    ([{"name": "click"}, {"name": "buy", "label": "is_buy"}, {"name": "x", "product_of": ["click", "buy"]}],
     "derived task 'x': product_of ['click', 'buy'] is not [parent, child] of a task with depends_on"),
])
def test_a_bad_cascade_is_a_config_error_naming_the_tasks(tmp_path, tasks, message):
    with pytest.raises(ConfigError) as err:
        tiny_spec(tmp_path, tasks=tasks)
    assert message in str(err.value)


def test_the_reader_labels_the_child_on_parent_positive_rows_and_the_product_on_every_parent_label(tmp_path):
    spec, _ = tiny_spec(tmp_path, tasks=CASCADE)
    click = np.array([1, 1, 1, 0, 0, 0, None, None], dtype=object)
    buy = np.array([1, 0, None, 1, 0, None, 1, None], dtype=object)
    table = tiny_table(0, 8, click=pa.array(click, pa.int8()), is_buy=pa.array(buy, pa.int8()))
    pq.write_table(table, tmp_path / "part.parquet")
    stream = ParquetStream(str(tmp_path / "part.parquet"), spec, 8, rank=0, world_size=1, num_workers=0, seed=0,
                           shuffle=False, shuffle_buffer_rows=0, drop_remainder=False)
    stream.set_epoch(0)
    batch = next(iter(stream))
    labelled = batch.label_mask.numpy()
    labels = np.where(labelled, batch.labels.numpy(), -1).astype(int)
    assert labels[:, 1].tolist() == [1, 0, -1, -1, -1, -1, -1, -1]  # buy: only where click is 1
    assert labels[:, 2].tolist() == [1, 0, -1, 0, 0, 0, -1, -1]  # click AND buy; unknown where either is


def test_a_chain_product_is_labelled_from_its_parent_product(tmp_path):
    from recsys_mtl.data.arrow import cascade_label_plan, cascade_labels_

    tasks = [{"name": "click"}, {"name": "buy", "label": "row", "depends_on": "cart"},
             {"name": "cart", "label": "is_buy", "depends_on": "click"}]  # the child before its parent
    spec, _ = tiny_spec(tmp_path, tasks=tasks)
    assert spec.task_names == ["click", "buy", "cart", "cart_buy", "click_cart"]
    #                    click buy cart (raw labels; -1 = null)
    raw = np.array([[1, 1, 1], [1, 1, 0], [1, -1, 1], [0, 1, 1], [1, 1, -1], [-1, 0, 0]], dtype=np.int8)
    labels = np.concatenate([raw, np.full((len(raw), 2), -9, dtype=np.int8)], axis=1)
    cascade_labels_(labels, cascade_label_plan(spec))
    assert labels[:, 2].tolist() == [1, 0, 1, -1, -1, -1]  # cart: where click is 1
    assert labels[:, 1].tolist() == [1, -1, -1, -1, -1, -1]  # buy: where cart (itself known where click is 1) is 1
    assert labels[:, 4].tolist() == [1, 0, 1, 0, -1, -1]  # click AND cart
    assert labels[:, 3].tolist() == [1, 0, -1, 0, -1, -1]  # click AND cart AND buy


def test_experiment_base_rates_of_a_cascade_are_the_childs_conditional_and_the_products_joint_rate(tmp_path):
    from recsys_mtl.experiments.weighting import train_base_rates

    spec, path = tiny_spec(tmp_path, tasks=CASCADE)
    (tmp_path / "train").mkdir()
    table = tiny_table(0, 400)
    pq.write_table(table, tmp_path / "train" / "part.parquet")
    rates = train_base_rates(tmp_path, path.name)
    click = table.column("click").to_numpy()
    buy = table.column("is_buy").to_numpy(zero_copy_only=False)  # NaN where null
    clicked = (click == 1) & ~np.isnan(buy)
    assert rates["buy"] == pytest.approx(buy[clicked].mean())
    product_labelled = (click == 0) | clicked
    assert rates["click_buy"] == pytest.approx(((click == 1) & (buy == 1))[product_labelled].mean())
