"""`recsys-mtl bench evaluate` runs both modes at a small N and prints their figures and the AUC deviation."""

from __future__ import annotations

import re

from recsys_mtl.cli import main


def test_bench_evaluate_prints_rows_per_second_peak_rss_and_an_auc_deviation_below_1e_4(capsys):
    assert main(["bench", "evaluate", "--rows", "20K,40K", "--tasks", "4", "--exact-max-rows", "20K"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^ *([\d,]+) +(streaming|exact) +([\d,]+) +([\d,]+) *(\S*)", out, re.M)
    assert [(n, mode) for n, mode, *_ in rows] == [("20,000", "streaming"), ("20,000", "exact"), ("40,000", "streaming")]
    assert "skipped: more than --exact-max-rows" in out
    for _, _, rate, rss, _ in rows:
        assert int(rate.replace(",", "")) > 0 and int(rss.replace(",", "")) > 0
    deviation = float(rows[1][4])
    assert 0 <= deviation < 1e-4
