"""The scoring read-ahead: the same batches in the same order, the reader's errors where they happened, and no
reader left behind when the consumer stops early."""

from __future__ import annotations

import threading
import time

import pytest

from recsys_mtl.evaluate.scoring import read_ahead


def test_read_ahead_yields_every_item_in_order():
    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(read_ahead(iter([]))) == []


def test_an_error_in_the_reader_is_raised_at_its_batch():
    def items():
        yield 1
        yield 2
        raise ValueError("row group 3: bad id")

    got = []
    with pytest.raises(ValueError, match="row group 3: bad id"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_the_reader():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    for item in read_ahead(items(), depth=2):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while any(t.name == "scoring-read-ahead" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "scoring-read-ahead" for t in threading.enumerate())
    assert len(produced) < 10  # it read at most a few batches ahead, not the whole set
