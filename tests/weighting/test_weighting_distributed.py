"""Two gloo processes with different local losses and labels compute identical weights, because the
per-task losses and label moments are all-reduced before weighting, as the trainer does."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T, STEPS = 6, 6
KWARGS = {"static": dict(weights=[1.0, 2.0, 0.5, 1.0, 1.0, 3.0]), "go4align": dict(num_groups=3, beta=0.05),
          "go4align@paper": dict(num_groups=3, beta=0.05, mode="paper")}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from recsys_mtl.weighting import LabelStats, build_weighting, weighting_methods

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different local losses
        results = {}
        methods = {n: build_weighting(n.split("@")[0], T, **KWARGS.get(n, {}))
                   for n in sorted([*weighting_methods(), "go4align@paper"])}
        binary = torch.tensor([True, True, True, True, False, False])
        local_losses = []
        for _ in range(STEPS):
            local = torch.rand(T, generator=g) + 0.1
            local_losses.append(local.clone())
            # presence is a property of the global batch: all-reduce it too (MAX of the local masks)
            present = (torch.rand(T, generator=g) < 0.8).to(torch.int32)
            dist.all_reduce(present, op=dist.ReduceOp.MAX)
            losses = local.clone()
            dist.all_reduce(losses, op=dist.ReduceOp.AVG)
            labels = torch.rand(16, T, generator=g) < 0.3  # this rank's labels; the moments are summed
            count = torch.where(present.bool(), 16.0, 0.0)
            moments = torch.cat([count, labels.float().sum(0) * (count > 0), labels.float().sum(0) * (count > 0)])
            dist.all_reduce(moments)
            stats = LabelStats(*moments.split(T), binary)
            for name, m in methods.items():
                w = m(losses, present.bool(), stats)
                if m.needs_post_step_losses:
                    after = losses * 0.9
                    m.post_step(after, present.bool())
                results.setdefault(name, []).append(w)
        torch.save({"weights": {k: torch.stack(v) for k, v in results.items()}, "local": torch.stack(local_losses)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_compute_identical_weights_from_all_reduced_losses():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    assert not torch.equal(r0["local"], r1["local"])
    assert set(r0["weights"]) == {"equal", "static", "uncertainty", "softmax_uncertainty", "dwa", "famo", "group_dro", "random", "go4align", "go4align@paper"}
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
