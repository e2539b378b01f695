"""`computed_on_rank0` in two real gloo processes: the result reaches both ranks, and rank 0's
exception stops both (before, the other rank waited in the broadcast until torchrun's timeout)."""

import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, init_file: str, out_dir: str, fail: bool) -> None:
    from recsys_mtl.train.distributed import computed_on_rank0

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=_timeout())

    def compute() -> dict:
        if fail:
            raise ValueError("metric blew up")
        return {"auc": 0.75}

    try:
        outcome = repr(computed_on_rank0(compute, 2))
    except Exception as exc:  # noqa: BLE001 - the test reads what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)


def _timeout():
    import datetime

    return datetime.timedelta(seconds=60)  # a hang fails the test instead of blocking it


@pytest.mark.parametrize("fail", [False, True])
def test_rank0_result_or_error_reaches_every_rank(tmp_path, fail):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), fail), nprocs=2, join=True)
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    if not fail:
        assert r0 == r1 == "{'auc': 0.75}"
    else:
        assert r0 == "ValueError: metric blew up"
        assert r1 == "ValueError: metric blew up"  # the same exception: one line from the CLI on each rank


def test_one_process_raises_the_original_error():
    from recsys_mtl.train.distributed import computed_on_rank0

    assert computed_on_rank0(lambda: 3, 1) == 3
    with pytest.raises(ZeroDivisionError):
        computed_on_rank0(lambda: 1 / 0, 1)


def test_a_stop_by_signal_survives_pickling():
    """DCP sends a rank's exception to rank 0 pickled: a Stopped(SIGTERM) must arrive as itself."""
    import pickle
    import signal

    from recsys_mtl.train.interrupt import Stopped

    back = pickle.loads(pickle.dumps(Stopped(signal.SIGTERM)))
    assert isinstance(back, Stopped) and isinstance(back, KeyboardInterrupt) and back.signum == signal.SIGTERM
