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


def _row_colours(path, rows: int):
    """RGB at the middle of each task row, halfway across the image (inside the heatmap)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    h, w, _ = img.shape
    col = img[:, int(w * 0.45)]
    top, bottom = int(h * 0.2), int(h * 0.8)  # within the heatmap's axes
    return [col[int(top + (bottom - top) * (r + 0.5) / rows)] for r in range(rows)]


@pytest.mark.parametrize("log_scale", [True, False])
def test_weights_a_hundred_times_apart_get_different_colours_on_the_log_scale_despite_a_spike(tmp_path, log_scale):
    """Weights of 0.01 and 1 beside one spike of 100: on a linear scale both are the bottom colour."""
    w = np.tile([[0.01, 1.0, 0.0]], (40, 1))  # third task absent (weight 0): blank on the log scale
    w[20, 1] = 100.0
    path = plot_task_heatmap(w, np.arange(40), ["a", "b", "c"], tmp_path / "w.png", log_scale=log_scale)
    a, b, c = _row_colours(path, 3)
    if log_scale:
        assert np.abs(a - b).sum() > 0.5  # the middle of viridis against its bottom
        assert np.allclose(c, 0.85, atol=0.02)  # blank: light grey
    else:
        assert np.abs(a - b).sum() < 0.05


def test_heatmap_norm_is_logarithmic_over_the_positive_values():
    from recsys_mtl.tracking.plots import heatmap_norm

    norm = heatmap_norm(np.array([[0.0, 0.01, 1.0, 100.0]]), log_scale=True)
    assert np.allclose(norm(np.array([0.01, 1.0, 100.0])), [0.0, 0.5, 1.0])
    assert np.allclose(heatmap_norm(np.array([[0.0, 50.0, 100.0]]), log_scale=False)(np.array([50.0])), 0.5)


def test_mixed_task_plots_mark_the_regression_tasks_and_name_both_normalized_errors(tmp_path, monkeypatch):
    import matplotlib.axes

    from recsys_mtl.tracking import plots

    names, types = ["click", "watch_time", "like"], ["binary", "regression", "binary"]
    assert plots.task_labels(names, types, "nmse") == ["click", "watch_time (nmse)", "like"]
    assert plots.task_labels(names, ["binary"] * 3) == names  # one kind: names as they are
    seen = {}
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda self, text, *a, **k: seen.update(x=text))
    real = matplotlib.axes.Axes.set_yticklabels
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticklabels",
                        lambda self, labels, *a, **k: (seen.update(y=list(labels)), real(self, labels, *a, **k))[1])
    plot_relative_ne_change(names, [0.01, -0.2, 0.0], tmp_path / "c.png", task_types=types, error_label="NE|NMSE")
    assert seen["x"].startswith("relative NE|NMSE change") and seen["y"][1] == "watch_time (nmse)"
    plot_task_heatmap(np.ones((3, 3)), [0, 1, 2], names, tmp_path / "w.png", task_types=types)
    assert seen["y"][1] == "watch_time (regression)"
