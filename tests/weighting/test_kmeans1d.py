"""Exact 1-D K-means: equals brute-force optimal partitions, no empty clusters, deterministic."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from weighting_reference import optimal_partitions, partition_weights

from recsys_mtl.weighting import kmeans_1d_exact


def _cost(x: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> float:
    return sum(float((x[i] - centers[labels[i]]) ** 2) for i in range(len(x)) if valid[i])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=7),
    mask_bits=st.integers(0, 2**7 - 1),
    k=st.integers(1, 8),
)
def test_exact_kmeans_cost_equals_brute_force_optimum(values, mask_bits, k):
    x = torch.tensor(values, dtype=torch.float64)
    valid = torch.tensor([bool(mask_bits >> i & 1) for i in range(len(values))])
    labels, centers = kmeans_1d_exact(x, valid, k)
    points = {i: values[i] for i in range(len(values)) if valid[i]}
    if not points:
        assert (labels == -1).all()
        return
    best, parts = optimal_partitions(points, k)
    assert _cost(x, valid, labels, centers) == pytest.approx(best, rel=1e-9, abs=1e-9)
    weights = [float(centers[labels[i]]) if valid[i] else 0.0 for i in range(len(values))]
    candidates = [partition_weights(points, p, len(values)) for p in parts]
    assert any(w == pytest.approx(weights, rel=1e-9, abs=1e-9) for w in candidates)


def test_exact_kmeans_matches_brute_force_partition_on_random_inputs():
    g = torch.Generator().manual_seed(7)
    for _ in range(60):
        t = int(torch.randint(1, 8, (1,), generator=g))
        k = int(torch.randint(1, 6, (1,), generator=g))
        x = torch.randn(t, generator=g, dtype=torch.float64) * 3
        valid = torch.rand(t, generator=g) < 0.8
        labels, centers = kmeans_1d_exact(x, valid, k)
        points = {i: float(x[i]) for i in range(t) if valid[i]}
        if not points:
            continue
        _, parts = optimal_partitions(points, k)
        assert len(parts) == 1  # continuous random values: a unique optimum
        got = sorted(sorted(i for i in range(t) if valid[i] and labels[i] == c) for c in range(k))
        assert [b for b in got if b] == sorted(sorted(b) for b in parts[0])


def test_every_cluster_is_non_empty_and_min_k_n_clusters_are_used():
    x = torch.tensor([5.0, 1.0, 1.0, 3.0, 9.0], dtype=torch.float64)
    for valid_count in range(1, 6):
        valid = torch.arange(5) < valid_count
        for k in range(1, 8):
            labels, centers = kmeans_1d_exact(x, valid, k)
            used = sorted(set(labels[valid].tolist()))
            assert used == list(range(min(k, valid_count)))
            assert (labels[~valid] == -1).all()
            assert centers.shape == (k,)


def test_clusters_are_numbered_by_increasing_centre():
    x = torch.tensor([10.0, -3.0, 4.0, 4.2, -2.9, 10.5])
    labels, centers = kmeans_1d_exact(x, torch.ones(6, dtype=torch.bool), 3)
    assert labels.tolist() == [2, 0, 1, 1, 0, 2]
    assert torch.all(centers[1:] > centers[:-1])


def test_invalid_entries_are_ignored_even_if_nan_or_inf():
    x = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 8.0])
    valid = torch.tensor([True, False, True, False, True])
    labels, centers = kmeans_1d_exact(x, valid, 2)
    assert labels.tolist() == [0, -1, 0, -1, 1]
    assert torch.allclose(centers, torch.tensor([1.5, 8.0]))


def test_no_valid_point_gives_all_invalid_labels_and_zero_centres():
    labels, centers = kmeans_1d_exact(torch.randn(4), torch.zeros(4, dtype=torch.bool), 3)
    assert (labels == -1).all() and (centers == 0).all()


def test_tied_values_are_grouped_deterministically():
    x = torch.tensor([2.0, 1.0, 2.0, 1.0, 2.0])
    valid = torch.ones(5, dtype=torch.bool)
    first = kmeans_1d_exact(x, valid, 4)
    for _ in range(3):
        again = kmeans_1d_exact(x, valid, 4)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    weights = first[1][first[0]]
    assert torch.equal(weights, x)  # tied points share their value as centre whichever way they are split


def test_k_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        kmeans_1d_exact(torch.zeros(3), torch.ones(3, dtype=torch.bool), 0)
