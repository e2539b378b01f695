"""Synthetic industrial data: Zipf-popular ids, correlated task families, partly unlabelled tasks.

Rows are (user, item, context) impressions. Every task's logit comes from the
same latent user and item factors through a task direction that is its
family's direction plus a small perturbation, so tasks come in correlated
families (click-like, watch, social, commerce, ...). Base rates are spread
log-uniformly from 0.1% to 60%. Post-click tasks are only labelled where
`click` is 1 and survey-like tasks only on a random 30% of rows (null
elsewhere). `drift > 0` rotates task directions a little more each day, so
task relationships change over dates.

`regression_tasks > 0` adds watch-time-like continuous targets (seconds, log-normal: heavy-tailed) after
the binary tasks: log(y) = mu + 0.8 s + 0.5 noise, with s built like a binary task's logit from the same
latent user/item factors and its family's shared per-row effect (watch or click family), so they correlate
with the binary families. Every other one is labelled only where `click` is 1 (dwell after a click).

Everything is a deterministic function of the seed: chunk c of the output is
drawn from `default_rng([seed, c])`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys_mtl.data.folder import SPEC_FILE, SYNTHETIC_FILE
from recsys_mtl.io import replace_dir

log = logging.getLogger(__name__)

ROW_GROUP = 131_072
LATENT = 8
FAMILY_NOISE = 1.6  # scale of the per-row random effect shared by a task family
FAMILIES = ["click", "watch", "social", "commerce", "negative", "creator"]
BASE_TASK_NAMES = [
    "click", "long_view", "like", "follow", "comment", "share", "conversion", "survey_satisfied",
    "finish", "profile_enter", "forward", "favorite", "add_to_cart", "purchase", "hide", "report",
    "replay", "download", "subscribe", "live_enter", "gift", "coupon_claim", "dwell_30s", "skip",
]

# (name, table, table size, zipf exponent or None for uniform); single-valued features
SINGLE = [
    ("user_id", "user", 1_000_000, 1.05),
    ("item_id", "item", 500_000, 1.10),
    ("music_id", "music", 200_000, 1.15),
    ("city", "city", 2_000, 1.2),
    ("device_model", "device_model", 5_000, 1.3),
    ("os", "os", 8, 1.5),
    ("app_version", "app_version", 300, 1.4),
    ("network", "network", 6, 1.2),
    ("hour", "hour", 24, None),
    ("weekday", "weekday", 7, None),
    ("channel", "channel", 50, 1.3),
    ("page", "page", 30, 1.5),
    ("position", "position", 100, 1.1),
    ("ad_campaign", "ad_campaign", 20_000, 1.1),
    ("age_bucket", "age_bucket", 10, None),
    ("gender", "gender", 3, None),
]
# derived single-valued features: (name, table, size, source feature)
DERIVED = [
    ("author_id", "author", 50_000, "item_id"),
    ("category", "category", 1_000, "item_id"),
    ("sub_category", "sub_category", 10_000, "item_id"),
    ("country", "country", 200, "city"),
    ("advertiser", "advertiser", 5_000, "ad_campaign"),
]
HASHED = ("query_hash", "query", 100_000)  # raw 63-bit hashes, taken modulo the table size
# multi-valued: (name, table, mean length, max length, source of ids)
MULTI = [
    ("hist_items", "item", 8, 50, "item"),
    ("hist_authors", "author", 4, 20, "author"),
    ("user_tags", "tag", 3, 10, "tag"),
    ("item_tags", "tag", 2, 8, "tag"),
]
TAG_TABLE = 10_000
DENSE = [
    ("user_activity", "log1p_standard"), ("user_tenure_days", "log1p_standard"),
    ("item_ctr_7d", "standard"), ("item_age_hours", "log1p_standard"), ("video_duration_s", "log1p_standard"),
    ("item_popularity", "log1p_standard"), ("price", "log1p_standard"), ("distance_km", "log1p_standard"),
    ("hist_len", "log1p_standard"), ("hour_sin", "none"), ("hour_cos", "none"), ("position_norm", "none"),
]


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    tasks: int = 32
    rows: int = 1_000_000
    days: int = 7
    seed: int = 0
    start_date: str = "2026-01-01"
    rows_per_file: int = 4 * ROW_GROUP
    row_group_size: int = ROW_GROUP
    table_scale: float = 1.0  # shrink every table (tests, laptops)
    drift: float = 0.0        # per-day rotation of task directions
    regression_tasks: int = 0  # watch-time-like continuous targets after the binary tasks
    # also write each post-click task's label on every row as `<task>_all` (what the row would have done had it been
    # clicked: the labels are drawn for every row before the mask), to evaluate conditional heads over all impressions
    post_click_all_labels: bool = False

    def __post_init__(self) -> None:  # ConfigError: the CLI prints one line
        from recsys_mtl.config.loader import ConfigError

        if not 1 <= self.tasks <= 128:
            raise ConfigError(f"tasks must be in [1, 128], got {self.tasks} (--tasks)")
        if not 0 <= self.regression_tasks <= 16:
            raise ConfigError(f"regression_tasks must be in [0, 16], got {self.regression_tasks} (--regression-tasks)")
        if self.rows < 1:
            raise ConfigError(f"rows must be >= 1, got {self.rows} (--rows)")
        if not 1 <= self.days <= 366:
            raise ConfigError(f"days must be in [1, 366], got {self.days} (--days)")
        if not 0 < self.table_scale <= 1:
            raise ConfigError(f"table_scale must be in (0, 1], got {self.table_scale} (--table-scale)")
        if self.row_group_size < 1 or self.rows_per_file < self.row_group_size:
            raise ConfigError("rows_per_file must be >= row_group_size >= 1")
        dt.date.fromisoformat(self.start_date)


def task_names(n: int) -> list[str]:
    names = list(BASE_TASK_NAMES[:n])
    i = 0
    while len(names) < n:
        names.append(f"{BASE_TASK_NAMES[i % len(BASE_TASK_NAMES)]}_{i // len(BASE_TASK_NAMES) + 2}")
        i += 1
    return names


REGRESSION_TASK_NAMES = ["watch_time", "dwell_time", "play_time", "session_time", "read_time", "listen_time"]
REGRESSION_CLIP_S = 36_000.0  # ten hours: the raw label's clip in the spec
REGRESSION_FAMILIES = (1, 0)  # watch, click: alternate regression tasks follow these families' factors


def regression_task_names(n: int) -> list[str]:
    return [REGRESSION_TASK_NAMES[i % len(REGRESSION_TASK_NAMES)] + (f"_{i // len(REGRESSION_TASK_NAMES) + 1}"
            if i >= len(REGRESSION_TASK_NAMES) else "") for i in range(n)]


def _size(cfg: SynthConfig, size: int) -> int:
    return max(4, int(round(size * cfg.table_scale))) if size > 64 else size


def _zipf(rng: np.random.Generator, n: int, size: int, a: float | None) -> np.ndarray:
    """Ids in [0, size) with P(rank r) ~ r^-a, ranks scattered over ids by a fixed bijection."""
    if a is None:
        return rng.integers(0, size, n, dtype=np.int64)
    u = rng.random(n)
    if abs(a - 1.0) < 1e-9:
        rank = np.exp(u * np.log(size + 1.0)) - 1.0
    else:
        e = 1.0 - a
        rank = (u * ((size + 1.0) ** e - 1.0) + 1.0) ** (1.0 / e) - 1.0
    rank = np.minimum(rank.astype(np.int64), size - 1)
    return _scatter(rank, size)


def _scatter(x: np.ndarray, size: int) -> np.ndarray:
    """A fixed bijection of [0, size): popular ranks are not the small ids."""
    mult = 2_654_435_761 % size or 1
    while np.gcd(mult, size) != 1:
        mult += 1
    return (x * mult + size // 3) % size


def _hash_to(x: np.ndarray, size: int, salt: int) -> np.ndarray:
    h = (x.astype(np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(size)).astype(np.int64)


class _World:
    """Latent factors and task parameters shared by every chunk (deterministic in the seed)."""

    def __init__(self, cfg: SynthConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 0xFACE])
        self.cfg = cfg
        self.sizes = {name: _size(cfg, size) for name, _, size, _ in SINGLE}
        self.sizes.update({name: _size(cfg, size) for name, _, size, _ in DERIVED})
        self.tag_size = _size(cfg, TAG_TABLE)
        self.user_f = rng.standard_normal((self.sizes["user_id"], LATENT), dtype=np.float32)
        self.item_f = rng.standard_normal((self.sizes["item_id"], LATENT), dtype=np.float32)
        self.context_f = rng.standard_normal((self.sizes["channel"], LATENT), dtype=np.float32) * 0.3
        T = cfg.tasks
        self.names = task_names(T)
        fam_dirs = rng.standard_normal((len(FAMILIES), LATENT))
        fam_dirs /= np.linalg.norm(fam_dirs, axis=1, keepdims=True)
        self.family = np.array([i % len(FAMILIES) for i in range(T)])
        w = fam_dirs[self.family] + 0.35 * rng.standard_normal((T, LATENT))
        self.task_dir = (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)
        self.drift_dir = rng.standard_normal((T, LATENT)).astype(np.float32)
        self.dense_w = (0.3 * rng.standard_normal((T, len(DENSE)))).astype(np.float32)
        self.position_bias = np.where(self.family == 0, 0.6, 0.2).astype(np.float32)
        rates = np.geomspace(0.6, 0.001, T) if T > 1 else np.array([0.1])
        if T > 1:
            rates = rates[rng.permutation(T)]
            rates[0] = 0.35  # `click` is the common upstream task of post-click labels
        self.target_rate = rates
        self.post_click = np.array([i % 8 == 6 and i > 0 for i in range(T)])
        self.partial = np.array([i % 8 == 7 for i in range(T)])
        self.bias = np.zeros(T, dtype=np.float32)
        self._calibrate()
        # regression targets: their own stream, so the binary tasks are the same with or without them
        R = cfg.regression_tasks
        reg_rng = np.random.default_rng([cfg.seed, 0x7E6])
        self.reg_names = regression_task_names(R)
        self.reg_family = np.array([REGRESSION_FAMILIES[i % len(REGRESSION_FAMILIES)] for i in range(R)], dtype=int)
        w = fam_dirs[self.reg_family] + 0.35 * reg_rng.standard_normal((R, LATENT))
        self.reg_dir = (w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-9)).astype(np.float32)
        self.reg_dense_w = (0.3 * reg_rng.standard_normal((R, len(DENSE)))).astype(np.float32)
        self.reg_mu = np.log(reg_rng.uniform(8.0, 60.0, R)).astype(np.float32)  # median 8-60 s
        self.reg_post_click = np.array([i % 2 == 1 for i in range(R)], dtype=bool)

    def regression_targets(self, user, item, channel, dense, family_noise, rng: np.random.Generator) -> np.ndarray:
        """[n, R] seconds: log-normal around each task's median, driven by the latent factors and the family's
        per-row effect (`family_noise` [n, families])."""
        inter = self.user_f[user] * (self.item_f[item] + self.context_f[channel])
        s = 1.2 * inter @ self.reg_dir.T + dense @ self.reg_dense_w.T + family_noise[:, self.reg_family]
        s = s / np.sqrt(1.2 ** 2 + FAMILY_NOISE ** 2)  # about unit scale, like a binary task's logit / its spread
        return np.exp(self.reg_mu + 0.8 * s + 0.5 * rng.standard_normal(s.shape)).astype(np.float32)

    def scores(self, user, item, channel, dense, position_norm, day) -> np.ndarray:
        inter = self.user_f[user] * (self.item_f[item] + self.context_f[channel])  # [n, k]
        dirs = self.task_dir + self.cfg.drift * day * self.drift_dir
        s = 1.2 * inter @ dirs.T  # [n, T]
        s += dense @ self.dense_w.T
        s -= self.position_bias[None, :] * position_norm[:, None] * 3
        return s

    def _calibrate(self) -> None:
        """Set each task's bias so its base rate hits the target (bisection on a fixed sample)."""
        rng = np.random.default_rng([self.cfg.seed, 0xCA11])
        cols = _draw_context(self, rng, 50_000, day=0)
        s = self.scores(cols["user_id"], cols["item_id"], cols["channel"], cols["_dense_std"], cols["position_norm"], 0)
        shared = FAMILY_NOISE * rng.standard_normal((len(s), len(FAMILIES))).astype(np.float32)[:, self.family]
        s = s + shared
        lo = np.full(s.shape[1], -30.0)
        hi = np.full(s.shape[1], 30.0)
        for _ in range(40):
            mid = (lo + hi) / 2
            rate = (1 / (1 + np.exp(-(s + mid)))).mean(axis=0)
            too_high = rate > self.target_rate
            hi = np.where(too_high, mid, hi)
            lo = np.where(too_high, lo, mid)
        self.bias = ((lo + hi) / 2).astype(np.float32)


def _draw_context(world: _World, rng: np.random.Generator, n: int, day: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for name, _, _, a in SINGLE:
        cols[name] = _zipf(rng, n, world.sizes[name], a)
    for name, _, _, src in DERIVED:
        cols[name] = _hash_to(cols[src], world.sizes[name], salt=len(name))
    cols["query_hash"] = rng.integers(0, 2**62, n, dtype=np.int64)
    u, i = cols["user_id"], cols["item_id"]
    uf, itf = world.user_f[u], world.item_f[i]
    position_norm = cols["position"] / float(world.sizes["position"])
    hist_len = np.minimum(rng.geometric(1 / 9, n) - 1, 50)
    dense_raw = np.stack([
        np.exp(1.5 + 0.8 * uf[:, 0] + 0.3 * rng.standard_normal(n)),            # user_activity
        np.exp(5.0 + 0.6 * uf[:, 1] + 0.5 * rng.standard_normal(n)),            # user_tenure_days
        1 / (1 + np.exp(-(itf[:, 0] - 2.0 + 0.3 * rng.standard_normal(n)))),   # item_ctr_7d
        np.exp(3.0 + 1.0 * rng.standard_normal(n)),                             # item_age_hours
        np.exp(3.5 + 0.5 * itf[:, 2] + 0.4 * rng.standard_normal(n)),           # video_duration_s
        np.exp(6.0 + 1.0 * itf[:, 3] + 0.5 * rng.standard_normal(n)),           # item_popularity
        np.exp(2.5 + 0.7 * itf[:, 4] + 0.2 * rng.standard_normal(n)),           # price
        np.exp(1.0 + 1.2 * rng.standard_normal(n)),                             # distance_km
        hist_len.astype(np.float64),                                            # hist_len
        np.sin(2 * np.pi * cols["hour"] / 24), np.cos(2 * np.pi * cols["hour"] / 24),
        position_norm,
    ], axis=1).astype(np.float32)
    # standardised copy that drives the labels (what the model can recover from the dense features)
    logd = np.log1p(np.abs(dense_raw))
    cols["_dense_std"] = ((logd - logd.mean(0)) / (logd.std(0) + 1e-6)).astype(np.float32)
    cols["_dense_raw"] = dense_raw
    cols["_hist_len"] = hist_len
    cols["position_norm"] = position_norm
    return cols


def _jagged(rng: np.random.Generator, lengths: np.ndarray, size: int, a: float) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = _zipf(rng, int(offsets[-1]), size, a)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _chunk(world: _World, chunk_index: int, n: int, day: int) -> pa.Table:
    cfg = world.cfg
    rng = np.random.default_rng([cfg.seed, chunk_index + 1])
    cols = _draw_context(world, rng, n, day)
    out: dict[str, pa.Array] = {}
    for name, *_ in SINGLE + DERIVED:
        out[name] = pa.array(cols[name])
    out["query_hash"] = pa.array(cols["query_hash"])
    lengths = {
        "hist_items": cols["_hist_len"],
        "hist_authors": np.minimum(rng.geometric(1 / 5, n) - 1, 20),
        "user_tags": np.minimum(rng.geometric(1 / 4, n) - 1, 10),
        "item_tags": np.minimum(rng.geometric(1 / 2, n), 8),
    }
    sizes = {"item": world.sizes["item_id"], "author": world.sizes["author_id"], "tag": world.tag_size}
    for name, _, _, _, src in MULTI:
        out[name] = _jagged(rng, lengths[name], sizes[src], 1.1)
    for j, (name, _) in enumerate(DENSE):
        out[name] = pa.array(cols["_dense_raw"][:, j])
    s = world.scores(cols["user_id"], cols["item_id"], cols["channel"], cols["_dense_std"], cols["position_norm"], day)
    family_noise = FAMILY_NOISE * rng.standard_normal((n, len(FAMILIES))).astype(np.float32)
    shared = family_noise[:, world.family]
    p = 1 / (1 + np.exp(-(s + shared + world.bias)))
    labels = (rng.random(p.shape) < p).astype(np.int8)
    click = labels[:, 0].astype(bool)
    for t, name in enumerate(world.names):
        mask = None
        if world.post_click[t]:
            mask = ~click
        elif world.partial[t]:
            mask = rng.random(n) >= 0.3
        out[name] = pa.array(labels[:, t], type=pa.int8(), mask=mask)
        if cfg.post_click_all_labels and world.post_click[t]:
            out[f"{name}_all"] = pa.array(labels[:, t], type=pa.int8())
    if cfg.regression_tasks:
        reg_rng = np.random.default_rng([cfg.seed, chunk_index + 1, 0x7E6])  # binary labels stay as without them
        y = world.regression_targets(cols["user_id"], cols["item_id"], cols["channel"], cols["_dense_std"],
                                     family_noise, reg_rng)
        for r, name in enumerate(world.reg_names):
            out[name] = pa.array(y[:, r], type=pa.float32(), mask=~click if world.reg_post_click[r] else None)
    return pa.table(out)


def feature_spec_dict(cfg: SynthConfig) -> dict:
    """The feature spec of data generated with `cfg` (tables sized by table_scale)."""
    tables: dict[str, dict] = {}
    sparse: list[dict] = []
    for name, table, size, _ in SINGLE + [(n, t, s, None) for n, t, s, _ in DERIVED]:
        tables[table] = {"num_embeddings": _size(cfg, size), "embedding_dim": 16}
        sparse.append({"name": name, "table": table})
    name, table, size = HASHED
    tables[table] = {"num_embeddings": _size(cfg, size), "embedding_dim": 16}
    sparse.append({"name": name, "table": table, "hashed": True})
    tables["tag"] = {"num_embeddings": _size(cfg, TAG_TABLE), "embedding_dim": 16, "pooling": "mean"}
    for name, table, *_ in MULTI:
        sparse.append({"name": name, "table": table, "multi_valued": True})
    dense = [{"name": n, "transform": t} for n, t in DENSE]
    # standardisation constants of the log1p'd raw features (measured on the generator's own sample)
    world_stats = _dense_stats(cfg)
    for d, (mean, std) in zip(dense, world_stats):
        if d["transform"] in ("standard", "log1p_standard"):
            d["mean"], d["std"] = round(float(mean), 4), round(float(std), 4)
    regression = f" + {cfg.regression_tasks} regression tasks" if cfg.regression_tasks else ""
    return {
        "name": f"synthetic_{cfg.tasks}" + (f"_r{cfg.regression_tasks}" if cfg.regression_tasks else ""),
        "description": f"recsys-mtl synthetic data: {cfg.tasks} tasks{regression}, seed {cfg.seed}, table_scale "
                       f"{cfg.table_scale}",
        "tables": tables,
        "sparse": sparse,
        "dense": dense,
        "tasks": [{"name": n} for n in task_names(cfg.tasks)] + [
            {"name": n, "type": "regression", "transform": "log1p", "clip": [0.0, REGRESSION_CLIP_S],
             **({"loss": "huber", "delta": 1.0} if r % 2 == 1 else {})}
            for r, n in enumerate(regression_task_names(cfg.regression_tasks))],
    }


def _dense_stats(cfg: SynthConfig) -> list[tuple[float, float]]:
    # Fixed reference world (seed 0, full scale) so the shipped spec does not depend on the seed.
    ref = _World(dataclasses.replace(cfg, tasks=1, seed=0, table_scale=cfg.table_scale, drift=0.0))
    cols = _draw_context(ref, np.random.default_rng([0, 0xD5]), 100_000, 0)
    raw = cols["_dense_raw"].astype(np.float64)
    stats = []
    for j, (_, transform) in enumerate(DENSE):
        x = np.sign(raw[:, j]) * np.log1p(np.abs(raw[:, j])) if transform.startswith("log1p") else raw[:, j]
        stats.append((x.mean(), x.std() + 1e-6))
    return stats


def generate_synthetic(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), overwrite: bool = False) -> Path:
    """Write date-partitioned Parquet (`date=YYYY-MM-DD/part-NNNNN.parquet`), `_feature_spec.yaml` and
    `_synthetic.json` (names Parquet readers skip: data/folder.py).

    Writes into a temporary sibling folder and renames it into place at the end, so an
    interrupted run never leaves a half-written dataset at `out_dir`.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        world = _World(cfg)
        start = dt.date.fromisoformat(cfg.start_date)
        per_day = np.full(cfg.days, cfg.rows // cfg.days)
        per_day[: cfg.rows % cfg.days] += 1
        chunk_index = 0
        files = 0
        for day, day_rows in enumerate(per_day):
            if day_rows == 0:
                continue
            day_dir = tmp / f"date={(start + dt.timedelta(days=day)).isoformat()}"
            day_dir.mkdir()
            written = 0
            part = 0
            while written < day_rows:
                file_rows = min(cfg.rows_per_file, day_rows - written)
                writer = None
                done = 0
                while done < file_rows:
                    n = min(cfg.row_group_size, file_rows - done)
                    table = _chunk(world, chunk_index, n, day)
                    chunk_index += 1
                    if writer is None:
                        writer = pq.ParquetWriter(day_dir / f"part-{part:05d}.parquet", table.schema, compression="snappy")
                    writer.write_table(table, row_group_size=cfg.row_group_size)
                    done += n
                writer.close()
                files += 1
                part += 1
                written += file_rows
        spec = feature_spec_dict(cfg)
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        meta = dataclasses.asdict(cfg) | {
            "task_families": {n: FAMILIES[f] for n, f in zip(world.names, world.family)},
            "target_base_rates": {n: float(r) for n, r in zip(world.names, world.target_rate)},
            "post_click_tasks": [n for n, pc in zip(world.names, world.post_click) if pc],
            "partly_labelled_tasks": [n for n, pl in zip(world.names, world.partial) if pl],
            "regression_tasks": {n: {"family": FAMILIES[f], "median_s": round(float(np.exp(mu)), 3),
                                     "labelled_where_click": bool(pc)}
                                 for n, f, mu, pc in zip(world.reg_names, world.reg_family, world.reg_mu,
                                                         world.reg_post_click)},
        }
        (tmp / SYNTHETIC_FILE).write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    log.info("wrote %d rows in %d files over %d days to %s", cfg.rows, files, cfg.days, out)
    return out


__all__ = ["SynthConfig", "generate_synthetic", "feature_spec_dict", "task_names", "regression_task_names"]
