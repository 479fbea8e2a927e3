"""`common.tables` (the table, CSV and order of compare.py and of a sweep's results) and
`tracking.stop_reasons` (how a trial's end is worded, and what MLflow status it gives its run)."""

from __future__ import annotations

import csv

from action_launch.common.tables import best_first, format_table, write_csv
from action_launch.tracking import stop_reasons


def test_best_first_puts_missing_and_nan_last_in_their_order():
    rows = [("a", None), ("b", 0.2), ("c", float("nan")), ("d", 0.9), ("e", 0.2), ("f", "")]
    assert [r[0] for r in best_first(rows, lambda r: r[1], "max")] == ["d", "b", "e", "a", "c", "f"]
    assert [r[0] for r in best_first(rows, lambda r: r[1], "min")] == ["b", "e", "d", "a", "c", "f"]


def test_table_right_aligns_numbers_and_csv_keeps_raw_values(tmp_path):
    columns, rows = ["trial", "val/top1", "stop"], [["t_0", 0.123456, "completed"], ["t_10", None, "errored: x"]]
    assert format_table(columns, rows).splitlines() == [
        "trial  val/top1  stop",
        "-----  --------  ----------",
        "t_0      0.1235  completed",
        "t_10             errored: x",
    ]
    path = write_csv(tmp_path / "sub" / "t.csv", columns, rows)
    assert list(csv.reader(path.read_text().splitlines())) == [
        columns,
        ["t_0", "0.123456", "completed"],
        ["t_10", "", "errored: x"],
    ]


def test_stop_reasons_give_the_run_status():
    stopped = stop_reasons.stopped_by("asha", "epoch", 2)
    assert stopped == "stopped by asha at epoch 2"
    assert stop_reasons.errored("E" * 500) == "errored: " + "E" * stop_reasons.ERROR_CHARS
    statuses = [stop_reasons.mlflow_status(r) for r in (stop_reasons.COMPLETED, stopped, stop_reasons.errored("x"))]
    assert statuses == ["FINISHED", "KILLED", "FAILED"]
    assert stop_reasons.run_stop_reason({"tags": {}, "status": "FAILED"}) == "failed"
    assert stop_reasons.outcome("failed") == "errored" and stop_reasons.outcome("running") == "other"
