"""Records `loss_trace_t6.json`: per-task losses of a tiny multi-task model under equal weighting.

Shared-bottom MLP, 6 binary tasks with different base rates, batch 64, SGD, 40 steps, seeded.
Tasks 4 and 5 have labels in only some batches (task 4: every third batch is unlabelled,
task 5: ~half of the batches), so the trace has tasks dropping in and out.
Run: PYTHONPATH=. python tests/weighting/data/record_loss_trace.py
"""

import json
from pathlib import Path

import torch
from torch import nn

T, STEPS, BATCH, DIM = 6, 40, 64, 8


def main() -> None:
    g = torch.Generator().manual_seed(1234)
    true_w = torch.randn(DIM, T, generator=g)
    bias = torch.tensor([-2.0, -1.0, 0.0, 0.5, -3.0, 1.0])
    model = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, T))
    torch.manual_seed(1234)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    losses_out, present_out = [], []
    for step in range(STEPS):
        x = torch.randn(BATCH, DIM, generator=g)
        y = (torch.rand(BATCH, T, generator=g) < torch.sigmoid(x @ true_w + bias)).float()
        present = torch.ones(T, dtype=torch.bool)
        present[4] = step % 3 != 2
        present[5] = bool(torch.rand((), generator=g) < 0.5)
        per = nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none").mean(0)
        per = torch.where(present, per, torch.zeros_like(per))
        opt.zero_grad()
        per.sum().backward()
        opt.step()
        losses_out.append([float(v) for v in per.detach()])
        present_out.append([bool(v) for v in present])
    path = Path(__file__).with_name("loss_trace_t6.json")
    path.write_text(json.dumps({"losses": losses_out, "present": present_out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
