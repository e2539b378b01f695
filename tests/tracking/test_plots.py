"""Plot artifacts are written at T=64 (PNG size and pixel dimensions), and reject mismatched inputs."""

import numpy as np
import pytest

from recsys_mtl.tracking.plots import plot_relative_ne_change, plot_task_heatmap

T = 64
NAMES = [f"task_{i:02d}_watch_time" for i in range(T)]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_weight_heatmap_with_64_tasks_grows_tall_enough_for_one_label_per_task(tmp_path):
    rng = np.random.default_rng(0)
    path = plot_task_heatmap(rng.uniform(0, 2, (200, T)), np.arange(200) * 10, NAMES, tmp_path / "w.png",
                             title="weights", colorbar_label="weight")
    width, height = _png_size(path)
    assert height >= T * 15, "at least ~15 px per task row so the names do not overlap"


def _pixel_colours(path):
    import collections

    import matplotlib.image

    rgb = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    return collections.Counter(map(tuple, rgb.reshape(-1, 3)))


def test_group_heatmap_uses_one_discrete_colour_per_group(tmp_path):
    import matplotlib

    groups = np.random.default_rng(1).integers(0, 5, (50, T))
    path = plot_task_heatmap(groups, np.arange(50), NAMES, tmp_path / "g.png", discrete=True)
    tab10 = [tuple(round(c * 255) for c in matplotlib.colormaps["tab10"](i)[:3]) for i in range(6)]
    pixels = _pixel_colours(path)
    heat = sum(pixels.values()) // 20  # the mesh fills well over half the figure: each group over 1/20 of it
    assert all(pixels[colour] > heat for colour in tab10[:5]), [pixels[c] for c in tab10]
    assert pixels[tab10[5]] < 100  # five groups, five colours (a few pixels of the colorbar's edge at most)
    smooth = _pixel_colours(plot_task_heatmap(groups, np.arange(50), NAMES, tmp_path / "c.png"))
    assert all(smooth[colour] < heat for colour in tab10[:5])  # a continuous map does not paint them


def test_relative_ne_change_bars_with_ci_whiskers_for_one_and_several_runs(tmp_path):
    rel = np.random.default_rng(2).normal(0, 0.005, T)
    ci = np.stack([rel - 0.002, rel + 0.002], axis=-1)
    one = plot_relative_ne_change(NAMES, rel, tmp_path / "one.png", ci=ci)
    two = plot_relative_ne_change(NAMES, np.stack([rel, -rel]), tmp_path / "two.png", series_names=["a", "b"])
    assert _png_size(one)[1] >= T * 15 and two.stat().st_size > 10_000


def test_plots_reject_names_that_do_not_match_the_values(tmp_path):
    with pytest.raises(ValueError, match="task names"):
        plot_task_heatmap(np.zeros((3, 4)), [0, 1, 2], ["a"], tmp_path / "x.png")
