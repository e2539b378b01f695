import io
import logging
import re
import sys

from recsys_mtl.train.progress import Progress


def test_a_log_file_gets_progress_lines_not_a_bar(caplog):
    with caplog.at_level("INFO", logger="recsys_mtl"):
        with Progress(total=4, initial=1, interactive=False, interval_s=0.0) as progress:
            progress.advance()
            progress.stats(12345.6, 0.25)
            progress.advance()
    lines = [r.message for r in caplog.records]
    assert lines == ["progress: step 2/4 (50%)", "progress: step 3/4 (75%), 12,346 samples/s, loss 0.2500"]


def test_a_log_file_gets_at_most_one_line_per_interval(caplog):
    with caplog.at_level("INFO", logger="recsys_mtl"):
        with Progress(total=None, initial=0, interactive=False, interval_s=3600.0) as progress:
            for _ in range(100):
                progress.advance()
    assert not caplog.records and progress.line() == "step 100"


def test_on_a_terminal_log_lines_are_printed_above_the_bar(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress(total=3, initial=0, interactive=True) as progress:
            progress.advance()
            logging.getLogger("recsys_mtl.test").warning("eval step 1: mean AUC 0.5")
            progress.advance()
        assert root.handlers.count(handler) == 1  # the console handler is back after the bar
    finally:
        root.removeHandler(handler)
    # the record is a line of its own: the bar is cleared ("\r" + blanks + "\r") before it is written
    segments = [seg for line in err.getvalue().split("\n") for seg in line.split("\r")]
    assert "eval step 1: mean AUC 0.5" in segments


def test_the_trainer_logs_progress_every_progress_every_s(tmp_path, caplog, monkeypatch):
    """A batch job's log (stderr not a terminal): `train.progress_every_s: 0` gives a line per step, 3600 none."""
    from recsys_mtl.train import Trainer
    from tests.models.batches import ListSource, rank_batches, tiny_spec
    from tests.train.helpers import tiny_config

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    spec = tiny_spec()
    batches = rank_batches(spec, 3, 16, 1, 0)
    counts = {}
    for every in (0, 3600):
        caplog.clear()
        cfg = tiny_config(tmp_path / str(every), train={"progress_bar": True, "progress_every_s": every})
        with caplog.at_level("INFO", logger="recsys_mtl.train.progress"):
            Trainer(cfg, spec=spec, train_data=ListSource(batches)).fit()
        counts[every] = [r.message.split(",")[0] for r in caplog.records if r.message.startswith("progress:")]
    assert counts == {0: ["progress: step 1/3 (33%)", "progress: step 2/3 (67%)", "progress: step 3/3 (100%)"],
                      3600: []}


def test_the_bar_shows_each_step_with_that_steps_figures(tmp_path, monkeypatch):
    """The trainer advanced the bar after setting its figures, so `step=` lagged the bar's count by one."""
    from recsys_mtl.train import Trainer
    from tests.models.batches import ListSource, rank_batches, tiny_spec
    from tests.train.helpers import tiny_config

    shown = []
    stats = Progress.stats

    def record(self, samples_per_second, loss):
        stats(self, samples_per_second, loss)
        shown.append((self.step, self._bar.n, self._bar.postfix))

    monkeypatch.setattr(Progress, "stats", record)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    spec = tiny_spec()
    Trainer(tiny_config(tmp_path, train={"progress_bar": True}), spec=spec,
            train_data=ListSource(rank_batches(spec, 3, 16, 1, 0))).fit()
    assert [(step, n) for step, n, _ in shown] == [(1, 1), (2, 2), (3, 3)]
    assert [re.search(r"\bstep=(\d+)\b", postfix).group(1) for _, _, postfix in shown] == ["1", "2", "3"]
