"""The input-pipeline benchmark runs and reports a positive rate for every row."""

import pytest

from benchmarks import data_bench as bench


def test_bench_rows_and_table():
    rows = bench.run(seconds=0.05, batch_size=8, workers=[])
    assert len(rows) == 7 and all(row[5] > 0 for row in rows)
    table = bench.format_table(rows)
    assert table.splitlines()[0].split() == ["source", "stored", "output", "mode", "workers", "images/s"]
    assert "JPEG folder" in table and "digits, float in memory" in table


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--seconds", "0"])
    assert exit_.value.code == 2
    assert "--seconds and --batch-size must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_train_step_comparison_reports_all_three_timings():
    timings = bench.time_train_step(batch_size=16, steps=3, rounds=1)
    assert set(timings) == {"fixed batch", "fed by make_loader", "loader alone"}
    assert all(ms > 0 for ms in timings.values())
