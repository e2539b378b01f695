"""KuaiRand subset -> Parquet (train/test time split) with user features joined.

Source: KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0; see the data's README.
Derived files stay under that license.

- Split: `date <= 20220418` is train, later dates are test (the data README's split).
  `split_date` moves it and `end_date` drops later days, e.g. a validation split
  carved from the train days only: `split_date=20220415, end_date=20220418`.
- Leaking columns are never features: `play_time_ms` (determines long_view and is_click),
  `comment_stay_time` (leaks is_comment); raw timestamps are not features. `play_time_ms` is kept
  as a label column only: `_feature_spec_play_time.yaml` trains it as a regression task (log1p) beside
  the 7 binary tasks of `_feature_spec.yaml`; it feeds no feature (nor the history counters).
- Categorical columns become contiguous ids with a vocabulary fitted on the train
  split only (id 0 = unknown or null), so no test information reaches the encoding.
- `duration_ms` is 0 for 18.5% of rows: kept as a dense feature plus a
  `duration_missing` flag.
- History counters (`history=True`, the default), point in time: for each user and
  each video, the number of earlier interactions (`user_hist_n`) and, per task, the
  smoothed label rate as a log-odds offset from the task's train rate
  (`user_hist_<task>`; 0 = no history). A train row on day d counts days before d
  only; a test row counts the train days only, so no test label (and never the
  row's own label) reaches a feature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import yaml

from recsys_mtl.data.errors import DataError
from recsys_mtl.data.folder import README_FILE, SPEC_FILE
from recsys_mtl.io import replace_dir

log = logging.getLogger(__name__)

INTERACTIONS = "kuairand27k_standard_kcore15_likehate.tsv"
USER_FEATURES = "kuairand_user_features_pure.csv"
SPLIT_DATE = 20220418
TASKS = ["is_click", "long_view", "is_follow", "is_comment", "is_forward", "is_profile_enter", "label"]
LEAKING = ["play_time_ms", "comment_stay_time"]  # never features
PLAY_TIME = "play_time_ms"  # of LEAKING, kept as a regression label (the only use of it)
PLAY_TIME_CLIP_MS = 3_600_000.0  # an hour; the data's longest play is ~10 minutes
PLAY_TIME_SPEC = "_feature_spec_play_time.yaml"  # a name Parquet readers skip (data/folder.py)
USER_CATEGORICAL = [
    "user_active_degree", "is_live_streamer", "is_video_author", "follow_user_num_range",
    "fans_user_num_range", "friend_user_num_range", "register_days_range",
] + [f"onehot_feat{i}" for i in range(18)]
USER_NUMERIC = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"]
EMBEDDING_DIM = 16
HISTORY_ENTITIES = {"user": "user_id", "video": "video_id"}
HISTORY_PRIOR_ROWS = 5.0  # pseudo-rows of the task's train rate in the smoothed history rate


def history_features(entity: np.ndarray, day: np.ndarray, labels: dict[str, np.ndarray], split_day: int,
                     prefix: str, prior_rows: float = HISTORY_PRIOR_ROWS,
                     priors: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Point-in-time counters of one entity (ids 0..E-1) over whole days.

    day: each row's day index (0..D-1); rows with day <= split_day are train. A train row on day d sees
    days < d; a later (test) row sees days <= split_day. labels: task -> float array (NaN = no label).
    Returns `{prefix}_n` (earlier rows) and `{prefix}_{task}`: log((pos + a p) / (n_t + a)) odds minus
    logit(p), with p the task's train rate (or `priors[task]`; one constant per task, the only input that
    reads every train day) and a = prior_rows; 0 where the entity has no history.
    """
    num_entities, num_days = int(entity.max()) + 1, int(day.max()) + 1
    seen_until = np.minimum(day, split_day + 1)  # exclusive: the days a row's features may count

    def before(values: np.ndarray) -> np.ndarray:
        grid = np.zeros((num_entities, num_days + 1), dtype=np.float64)
        np.add.at(grid, (entity, day + 1), values)
        return np.cumsum(grid, axis=1)[entity, seen_until]  # sum over days < seen_until

    train = day <= split_day
    out = {f"{prefix}_n": before(np.ones(len(entity))).astype(np.float32)}
    for task, y in labels.items():
        has = ~np.isnan(y)
        p = priors[task] if priors is not None else np.nanmean(np.where(train & has, y, np.nan))
        p = float(np.clip(p, 1e-4, 1 - 1e-4))
        n = before(has.astype(np.float64))
        pos = before(np.where(has, y, 0.0))
        rate = (pos + prior_rows * p) / (n + prior_rows)
        out[f"{prefix}_{task}"] = (np.log(rate / (1 - rate)) - np.log(p / (1 - p))).astype(np.float32)
    return out


def _read(src: Path, name: str, **kwargs) -> pa.Table:
    path = src / name
    if not path.exists():
        raise DataError(f"{path}: not found (expected the KuaiRand subset from ../shared/data/kuairand)")
    try:
        return pcsv.read_csv(path, **kwargs)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from None


def _vocab_ids(train_values: pa.Array, values: pa.Array) -> np.ndarray:
    """Contiguous ids 1..V for values seen in train (sorted), 0 for unseen or null."""
    vocab = pc.unique(train_values.drop_null())
    vocab = vocab.take(pc.sort_indices(vocab))
    idx = pc.index_in(values, value_set=vocab)
    return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def parse_date(value: str | int) -> int:
    """`20220418`, `"20220418"` or `"2022-04-18"` -> 20220418; DataError otherwise."""
    text = str(value).replace("-", "")
    try:
        day = dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        day = None
    if day is None:
        raise DataError(f"date {value!r}: expected YYYYMMDD or YYYY-MM-DD")
    return day.year * 10000 + day.month * 100 + day.day


def _day(d: int) -> str:
    return f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}"


def convert_kuairand(src: str | Path, out: str | Path, overwrite: bool = False,
                     split_date: int = SPLIT_DATE, end_date: int | None = None, history: bool = True) -> Path:
    """Write `out/train/date=YYYY-MM-DD/part-00000.parquet`, `out/test/...`, `out/_feature_spec.yaml` and
    `out/_README.md` (names Parquet readers skip: data/folder.py).

    train: `date <= split_date`; test: `split_date < date <= end_date` (default: every later day).
    """
    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    inter = _read(src, INTERACTIONS, parse_options=pcsv.ParseOptions(delimiter="\t"))
    users = _read(src, USER_FEATURES)
    missing = [c for c in ["user_id", "video_id", "date", "hourmin", "duration_ms", *TASKS] if c not in inter.column_names]
    if missing:
        raise DataError(f"{src / INTERACTIONS}: missing columns {missing}; has {inter.column_names}")
    missing = [c for c in ["user_id", *USER_CATEGORICAL, *USER_NUMERIC] if c not in users.column_names]
    if missing:
        raise DataError(f"{src / USER_FEATURES}: missing columns {missing}")

    days = np.unique(inter.column("date").to_numpy())
    if end_date is not None and end_date <= split_date:
        raise DataError(f"end_date {end_date} must be after split_date {split_date}")
    last = days[-1] if end_date is None else min(end_date, days[-1])
    if not (days[0] <= split_date < last):
        raise DataError(f"split_date {split_date}: leaves no train or no test day; the data has days "
                        f"{days[0]} to {days[-1]}" + (f" (end_date {end_date})" if end_date is not None else ""))
    if end_date is not None:
        inter = inter.filter(pc.less_equal(inter.column("date"), end_date))
    play_time = inter.column(PLAY_TIME) if PLAY_TIME in inter.column_names else None
    inter = inter.drop_columns([c for c in LEAKING if c in inter.column_names])
    if play_time is not None:  # back as a label under another name until the table is written: no feature reads it
        inter = inter.append_column("_label_play_time_ms", play_time)
    joined = inter.join(users, keys="user_id", join_type="left outer").combine_chunks()
    # the join does not keep row order: restore the interaction log's time order
    joined = joined.take(pc.sort_indices(joined, sort_keys=[("time_ms", "ascending"), ("user_id", "ascending"), ("video_id", "ascending")]))
    if joined.num_rows != inter.num_rows:
        raise DataError(f"{src / USER_FEATURES}: user_id is not unique ({joined.num_rows} rows after the join, {inter.num_rows} before)")
    date = joined.column("date").to_numpy()
    is_train = date <= split_date
    train = joined.filter(pa.array(is_train))

    cols: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for name in ["user_id", "video_id", *USER_CATEGORICAL]:
        col = joined.column(name)
        if pa.types.is_floating(col.type):
            col = col.cast(pa.int64())
            train_col = train.column(name).cast(pa.int64())
        else:
            train_col = train.column(name)
        cols[name] = _vocab_ids(train_col.combine_chunks(), col.combine_chunks())
        sizes[name] = int(len(pc.unique(train_col.combine_chunks().drop_null()))) + 1
    hourmin = joined.column("hourmin").to_numpy()
    cols["hour"] = (hourmin // 100).astype(np.int64)
    sizes["hour"] = 24
    days = np.array([dt.date(d // 10000, d // 100 % 100, d % 100).weekday() for d in np.unique(date)])
    cols["weekday"] = days[np.searchsorted(np.unique(date), date)].astype(np.int64)
    sizes["weekday"] = 7

    duration = joined.column("duration_ms").to_numpy().astype(np.float32)
    dense = {"duration_s": duration / 1000.0, "duration_missing": (duration <= 0).astype(np.float32)}
    for name in USER_NUMERIC:
        dense[name] = pc.fill_null(joined.column(name), 0).to_numpy(zero_copy_only=False).astype(np.float32)
    transforms = {"duration_missing": "none"}
    if history:
        unique_days = np.unique(date)
        day_index = np.searchsorted(unique_days, date)
        split_day = int(np.searchsorted(unique_days, split_date, side="right")) - 1
        labels = {t: pc.cast(joined.column(t), pa.float64()).to_numpy(zero_copy_only=False) for t in TASKS}
        for prefix, column in HISTORY_ENTITIES.items():
            feats = history_features(cols[column], day_index, labels, split_day, f"{prefix}_hist")
            dense.update(feats)
            transforms.update({name: "standard" for name in feats if not name.endswith("_n")})
    stats = {}
    for name, x in dense.items():
        transform = transforms.get(name, "log1p_standard")
        if transform in ("log1p_standard", "standard"):
            lx = np.sign(x[is_train]) * np.log1p(np.abs(x[is_train])) if transform == "log1p_standard" else x[is_train]
            stats[name] = (round(float(lx.mean()), 4), round(float(lx.std()) + 1e-4, 4))
        transforms[name] = transform

    table = {"date": pa.array(date)}
    table.update({k: pa.array(v) for k, v in cols.items()})
    table.update({k: pa.array(v) for k, v in dense.items()})
    for t in TASKS:
        table[t] = joined.column(t).cast(pa.int8())
    if play_time is not None:
        table[PLAY_TIME] = joined.column("_label_play_time_ms")
    full = pa.table(table)

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, mask in (("train", is_train), ("test", ~is_train)):
            part = full.filter(pa.array(mask))
            for d in np.unique(part.column("date").to_numpy()):
                day = part.filter(pc.equal(part.column("date"), int(d))).drop_columns(["date"])
                folder = tmp / split / f"date={_day(int(d))}"
                folder.mkdir(parents=True)
                pq.write_table(day, folder / "part-00000.parquet", compression="snappy")
        spec = kuairand_spec(sizes, transforms, stats, split_date)
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        if play_time is not None:
            spec = kuairand_spec(sizes, transforms, stats, split_date, play_time=True)
            (tmp / PLAY_TIME_SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
        (tmp / README_FILE).write_text(
            "Derived from KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0. "
            f"Train: date <= {split_date} ({int(is_train.sum())} rows); test: "
            f"{'later' if end_date is None else f'to {end_date}'} ({int((~is_train).sum())} rows). "
            f"Source sha256 of {INTERACTIONS}: {hashlib.sha256((src / INTERACTIONS).read_bytes()).hexdigest()}\n"
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    log.info("wrote KuaiRand: %d train rows, %d test rows to %s", int(is_train.sum()), int((~is_train).sum()), out)
    return out


def kuairand_spec(sizes: dict[str, int], transforms: dict[str, str], stats: dict[str, tuple[float, float]],
                  split_date: int = SPLIT_DATE, play_time: bool = False) -> dict:
    """The spec of the converted data: 7 binary tasks, and with `play_time` also `play_time_ms` as a regression task
    on log1p(ms) (a label only)."""
    tables, sparse = {}, []
    for name, size in sizes.items():
        table = "video" if name == "video_id" else ("user" if name == "user_id" else name)
        tables[table] = {"num_embeddings": size, "embedding_dim": EMBEDDING_DIM}
        sparse.append({"name": name, "table": table})
    dense = []
    for name, transform in transforms.items():
        entry = {"name": name, "transform": transform}
        if name in stats:
            entry["mean"], entry["std"] = stats[name]
        dense.append(entry)
    tasks = [{"name": t} for t in TASKS]
    if play_time:
        tasks.append({"name": PLAY_TIME, "type": "regression", "transform": "log1p", "loss": "mse",
                      "clip": [0.0, PLAY_TIME_CLIP_MS]})
    return {
        "name": "kuairand_play_time" if play_time else "kuairand",
        "description": f"KuaiRand-27K subset (CC BY-SA 4.0), 7 tasks"
                       + (" + play_time_ms (regression, log1p)" if play_time else "")
                       + f", time split at {_day(split_date)}",
        "tables": tables,
        "sparse": sparse,
        "dense": dense,
        "tasks": tasks,
    }


__all__ = ["convert_kuairand", "parse_date", "TASKS", "SPLIT_DATE", "PLAY_TIME", "PLAY_TIME_SPEC"]
