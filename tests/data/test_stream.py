import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recsys_mtl.data import Batch, DataError
from recsys_mtl.data.arrow import ArrowConverter
from recsys_mtl.data.stream import ParquetStream

from .tiny import tiny_spec, tiny_table, write_tiny


@pytest.fixture()
def tiny(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    return spec, write_tiny(tmp_path / "data", files=3, rows_per_file=1000, row_group=250)


def rows_of(batch: Batch) -> list[int]:
    return batch.dense[:, 0].to(torch.int64).tolist()


def collect(stream) -> list[Batch]:
    return list(stream)


def test_batch_has_documented_shapes_dtypes_and_is_pipelineable(tiny):
    spec, folder = tiny
    batch = next(iter(ParquetStream(folder, spec, 64)))
    assert isinstance(batch, Pipelineable)
    assert batch.dense.shape == (64, 2) and batch.dense.dtype == torch.float32
    assert batch.labels.shape == (64, 2) and batch.labels.dtype == torch.float32
    assert batch.label_mask.shape == (64, 2) and batch.label_mask.dtype == torch.bool
    assert isinstance(batch.sparse, KeyedJaggedTensor)
    assert batch.sparse.keys() == ["user_id", "item_id", "hist_items", "query"]
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert torch.equal(moved.labels, batch.labels)


def test_unshuffled_stream_reproduces_every_value_of_the_files(tiny):
    spec, folder = tiny
    batches = collect(ParquetStream(folder, spec, 96, shuffle=False, drop_remainder=False))
    table = ds.dataset(folder).to_table()
    assert sum(b.batch_size for b in batches) == table.num_rows == 3000
    rows = np.concatenate([rows_of(b) for b in batches])
    assert (rows == np.arange(3000)).all()
    kjt = {k: [] for k in spec.sparse_names}
    lens = {k: [] for k in spec.sparse_names}
    for b in batches:
        for k, jt in b.sparse.to_dict().items():
            kjt[k].append(jt.values().numpy())
            lens[k].append(jt.lengths().numpy())
    assert (np.concatenate(kjt["user_id"]) == table.column("user_id").to_numpy()).all()
    hist = table.column("hist_items").combine_chunks()
    assert (np.concatenate(kjt["hist_items"]) == hist.flatten().to_numpy()).all()
    assert (np.concatenate(lens["hist_items"]) == np.diff(hist.offsets.to_numpy())).all()
    # hashed feature: id mod table size, including negative raw ids
    assert (np.concatenate(kjt["query"]) == np.remainder(table.column("query").to_numpy(), 7)).all()
    # labels and masks: null -> mask False, label 0
    buy = table.column("is_buy").to_numpy(zero_copy_only=False)
    mask = np.concatenate([b.label_mask[:, 1].numpy() for b in batches])
    labels = np.concatenate([b.labels[:, 1].numpy() for b in batches])
    assert (mask == ~np.isnan(buy)).all()
    assert (labels[mask] == buy[mask]).all() and (labels[~mask] == 0).all()
    price = np.concatenate([b.dense[:, 1].numpy() for b in batches])
    np.testing.assert_allclose(price, np.log1p(table.column("price").to_numpy()), rtol=1e-6)


def test_non_null_integer_ids_convert_without_copy(tiny):
    spec, folder = tiny
    table = ds.dataset(folder).to_table(columns=spec.columns()).slice(0, 250)
    cols = ArrowConverter(spec).convert(table, "x")
    buffer = table.column("user_id").chunks[0].buffers()[1]
    assert np.shares_memory(cols.ids[0], np.frombuffer(buffer, dtype=np.int64))
    # a batch that lies inside one row group is a view of it: dense shares memory
    assert np.shares_memory(cols.slice(10, 20).dense, cols.dense)


def test_ranks_get_equal_steps_and_disjoint_rows(tiny):
    spec, folder = tiny
    for workers in (0, 2):
        streams = [ParquetStream(folder, spec, 100, rank=r, world_size=2, num_workers=workers, seed=3) for r in range(2)]
        lengths = [len(s) for s in streams]
        assert lengths[0] == lengths[1] > 0
        seen = [np.concatenate([rows_of(b) for b in s]) for s in streams]
        assert [len(x) for x in seen] == [n * 100 for n in lengths]
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) + len(seen[1])


def test_uneven_files_still_give_every_rank_the_same_steps(tmp_path):
    import pyarrow.parquet as pq

    spec, _ = tiny_spec(tmp_path)
    folder = tmp_path / "d"
    folder.mkdir()
    for i, n in enumerate([900, 130, 410, 60]):
        pq.write_table(tiny_table(i * 1000, n), folder / f"p{i}.parquet", row_group_size=n)
    lens = [len(ParquetStream(folder, spec, 50, rank=r, world_size=3, seed=s)) for s in range(3) for r in range(3)]
    assert all(lens[i] == lens[i - i % 3] for i in range(len(lens)))


def test_batches_in_epoch_counts_each_epochs_own_plan(tmp_path):
    """Shuffled uneven row groups split differently each epoch: the count (the progress bar's total) follows."""
    import pyarrow.parquet as pq

    spec, _ = tiny_spec(tmp_path)
    folder = tmp_path / "d"
    folder.mkdir()
    for i, n in enumerate([900, 130, 410, 60, 300]):
        pq.write_table(tiny_table(i * 1000, n), folder / f"p{i}.parquet", row_group_size=n)
    stream = ParquetStream(folder, spec, 50, rank=1, world_size=2, seed=2)
    counts = [stream.batches_in_epoch(e) for e in range(4)]
    assert len(set(counts)) > 1
    for epoch, expected in enumerate(counts):
        stream.set_epoch(epoch)
        assert len(stream) == expected == len(collect(stream))


def test_epoch_shuffle_is_seeded_and_changes_between_epochs(tiny):
    spec, folder = tiny
    def order(seed, epoch):
        s = ParquetStream(folder, spec, 250, seed=seed)
        s.set_epoch(epoch)
        return [min(rows_of(b)) for b in s]  # a batch is one row group here (its rows shuffled inside it)
    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 0)) == sorted(order(1, 1))


def test_shuffle_reorders_the_rows_inside_a_single_row_group_file(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    folder = write_tiny(tmp_path / "one", files=1, rows_per_file=1000, row_group=1000)  # e.g. one time-sorted file

    def rows(shuffle, epoch=0, seed=3):
        stream = ParquetStream(folder, spec, 100, seed=seed, shuffle=shuffle)
        stream.set_epoch(epoch)
        return np.concatenate([rows_of(b) for b in stream])

    assert rows(False).tolist() == list(range(1000))
    shuffled = rows(True)
    assert sorted(shuffled.tolist()) == list(range(1000))  # every row once
    assert abs(np.corrcoef(shuffled, np.arange(1000))[0, 1]) < 0.1  # not in file order
    assert (rows(True) == shuffled).all() and (rows(True, epoch=1) != shuffled).mean() > 0.9


def test_shuffle_buffer_permutes_rows_within_windows(tiny):
    spec, folder = tiny
    plain = np.concatenate([rows_of(b) for b in ParquetStream(folder, spec, 100, seed=2)])
    mixed = np.concatenate([rows_of(b) for b in ParquetStream(folder, spec, 100, seed=2, shuffle_buffer_rows=500)])
    assert sorted(plain) == sorted(mixed)
    assert (plain != mixed).mean() > 0.9
    for w in range(0, len(plain), 500):
        assert sorted(plain[w : w + 500]) == sorted(mixed[w : w + 500])


@pytest.mark.parametrize("workers,buffer", [(0, 0), (0, 300), (2, 0), (2, 300)])
def test_restored_position_neither_repeats_nor_skips_rows(tiny, workers, buffer):
    spec, folder = tiny
    kwargs = dict(rank=1, world_size=2, num_workers=workers, seed=5, shuffle_buffer_rows=buffer)
    full = ParquetStream(folder, spec, 60, **kwargs)
    full.set_epoch(1)
    expected = [rows_of(b) for b in full]
    first = ParquetStream(folder, spec, 60, **kwargs)
    first.set_epoch(1)
    it = iter(first)
    head = [rows_of(next(it)) for _ in range(5)]  # the reader may have prefetched more
    state = first.position_after(5)
    resumed = ParquetStream(folder, spec, 60, **kwargs)
    resumed.load_state_dict(state)
    tail = [rows_of(b) for b in resumed]
    assert head + tail == expected


def test_restoring_with_other_reader_settings_is_a_clear_error(tiny):
    spec, folder = tiny
    state = ParquetStream(folder, spec, 60).position_after(3)
    with pytest.raises(DataError, match="batch_size was 60, the stream has 50"):
        ParquetStream(folder, spec, 50).load_state_dict(state)


def test_too_little_data_for_the_slots_is_a_clear_error(tiny):
    spec, folder = tiny
    with pytest.raises(DataError, match=r"no full batch of 2000 rows for each of 4 reader slots \(2 ranks x 2 workers\)"):
        ParquetStream(folder, spec, 2000, world_size=2, num_workers=2)
    units = len(ParquetStream(folder, spec, 10).units)
    with pytest.raises(DataError, match=rf"in {units} row groups .*some slot gets none: write the data in more, "
                                        r"smaller row groups, or use fewer ranks/workers"):
        ParquetStream(folder, spec, 10, world_size=units + 1)


def test_hive_date_partitions_are_read(synth_small):
    from recsys_mtl.config import FeatureSpec

    spec = FeatureSpec.load(synth_small / "_feature_spec.yaml")
    days = sorted(p.name for p in synth_small.iterdir() if p.name.startswith("date="))
    assert days == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    one_day = ParquetStream(synth_small / days[0], spec, 1000, drop_remainder=False)
    assert one_day.num_rows == 8000
    everything = ParquetStream(synth_small, spec, 1000, drop_remainder=False)
    assert everything.num_rows == 24_000 and len(everything.units) == 12


def test_a_pyarrow_filesystem_uri_reads_the_same_batches_as_the_local_path(tiny):
    spec, folder = tiny
    (folder / "_SUCCESS").write_text("")  # side files are skipped under a URI as under a path
    local = ParquetStream(folder, spec, 100, rank=1, world_size=2, shuffle=True, seed=3)
    remote = ParquetStream(folder.resolve().as_uri(), spec, 100, rank=1, world_size=2, shuffle=True, seed=3)
    assert remote.num_rows == local.num_rows == 3000 and remote.fingerprint == local.fingerprint
    pairs = list(zip(collect(remote), collect(local), strict=True))
    assert len(pairs) == len(local)
    for a, b in pairs:
        assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.sparse.values(), b.sparse.values())
    one_file = sorted(folder.glob("*.parquet"))[0]
    assert ParquetStream(one_file.resolve().as_uri(), spec, 100).num_rows == 1000


def test_a_bad_or_missing_uri_is_a_clear_error(tiny, tmp_path):
    spec, folder = tiny
    with pytest.raises(DataError, match=r"file://.*/nowhere: no such file or directory"):
        ParquetStream((tmp_path / "nowhere").as_uri(), spec, 100)
    with pytest.raises(DataError, match=r"nosuchscheme://x: cannot open this URI as a pyarrow filesystem"):
        ParquetStream("nosuchscheme://x", spec, 100)
    with pytest.raises(DataError, match="either all local or all URIs"):
        ParquetStream([folder, folder.resolve().as_uri()], spec, 100)
