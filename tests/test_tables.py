"""The results table every command ends with, and progress lines that do not flood logs."""

from __future__ import annotations

import io

from lfads_lightning.evaluation.tables import metrics_json, metrics_table, results_report
from lfads_lightning.progress import Progress

METRICS = {
    "posterior/train_rate_r2": 0.97,
    "posterior/train_bps": 0.5,
    "posterior/valid_rate_r2": 0.96,
    "posterior/valid_bps": 0.49,
    "posterior/valid_co_bps": 0.31,
    "posterior/valid_vel_r2": 0.88,
    "eval/valid_psth_r2": 0.7,
    "train_seconds": 12.0,
}


def test_metrics_table_rows_are_splits_columns_the_nlb_metrics():
    lines = metrics_table(METRICS).splitlines()
    assert lines[0].split() == [
        "split",
        "co-bps",
        "vel",
        "R2",
        "psth",
        "R2",
        "rate",
        "R2",
        "bits/spike",
    ]
    assert lines[2].split() == ["train", "-", "-", "-", "0.9700", "0.5000"]
    assert lines[3].split() == ["valid", "0.3100", "0.8800", "0.7000", "0.9600", "0.4900"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned
    assert "fp-bps" not in lines[0]  # a metric no split has is left out


def test_sessions_bare_names_and_json():
    table = metrics_table({"posterior/s0_valid_bps": 0.1, "posterior/s1_valid_bps": 0.2})
    assert [line.split()[:2] for line in table.splitlines()[2:]] == [
        ["s0", "valid"],
        ["s1", "valid"],
    ]
    assert "valid" in metrics_table({"valid_co_bps": 0.3})
    assert metrics_table({"train_seconds": 1.0}) == "(no posterior metrics)"
    assert metrics_json(METRICS)["valid"]["co_bps"] == 0.31


def test_results_report_says_where_things_are():
    text = results_report("done", METRICS, "/out/RUN", "sqlite:///m.db", "RUN")
    assert text.splitlines()[0] == "done"
    assert "outputs:     /out/RUN" in text
    assert "MLflow UI:   lfads ui --tracking-uri sqlite:///m.db" in text


def test_progress_in_a_log_writes_a_line_per_interval_and_one_at_the_end():
    out = io.StringIO()
    with Progress("sampling", 100, "batches", stream=out, interval=3600) as p:
        for _ in range(100):
            p.update()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert "sampling: done, 100 batches in" in out.getvalue()
    out = io.StringIO()
    with Progress("sampling", 4, stream=out, interval=0) as p:
        p.update(2)
    assert "2/4 (50%)" in out.getvalue().splitlines()[0]


def test_print_results_table_or_json(capsys):
    import json

    from lfads_lightning.cli.common import print_results

    print_results("done", METRICS, False, "/out/RUN", "sqlite:///m.db", "RUN", {"score with": "x"})
    out = capsys.readouterr().out
    assert out.startswith("done\nsplit") and out.rstrip().endswith("score with:  x")
    print_results("done", METRICS, True, "/out/RUN", "sqlite:///m.db", "RUN")
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_id"] == "RUN" and payload["metrics"]["valid"]["rate_r2"] == 0.96
    assert payload["all_metrics"]["train_seconds"] == 12.0 and payload["outputs"] == "/out/RUN"
