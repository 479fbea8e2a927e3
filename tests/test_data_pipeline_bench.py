"""bench/data_pipeline.py: its DataLoader clock counts worker start-up and the first batches, 1 and N workers
take turns in alternating order with per-round ratios, and the bench itself runs (so it cannot rot)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import ModuleType, SimpleNamespace
from typing import Iterator, List, Optional, Sequence

import pytest
import torch
from conftest import REPO


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_data_pipeline", REPO / "bench" / "data_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


class FakeClock:
    """A perf_counter that moves only when the fake loader works."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowLoader:
    """A loader whose iterator costs `start_up` seconds to create (worker start-up), then yields batches of
    `batch_size` clips, the clock moving by `steps[k]` before batch k."""

    def __init__(
        self,
        clock: FakeClock,
        start_up: float,
        steps: Sequence[float],
        batch_size: int,
        calls: Optional[List[str]] = None,
        name: str = "loader",
    ) -> None:
        self.clock, self.start_up, self.steps, self.batch_size = clock, start_up, steps, batch_size
        self.calls, self.name = calls if calls is not None else [], name

    def __iter__(self) -> Iterator[List[torch.Tensor]]:
        self.calls.append(self.name)
        self.clock.now += self.start_up
        return self._batches()

    def _batches(self) -> Iterator[List[torch.Tensor]]:
        for step in self.steps:
            self.clock.now += step
            yield [torch.zeros(self.batch_size, 1), torch.zeros(self.batch_size)]


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=fake))
    return fake


def test_loader_rate_counts_worker_start_up_and_the_first_batch(clock):
    # 3 batches of 4 clips: 2 s of start-up + 3 x 1 s. A clock started at the first batch would say 8 clips / 2 s.
    assert bench.loader_rate(SlowLoader(clock, 2.0, [1.0, 1.0, 1.0], batch_size=4)) == pytest.approx(12 / 5.0)


def test_a_worker_whose_first_batch_is_ready_with_the_others_gets_no_free_batch(clock):
    # Two workers finish their first batches together (1 s each), then one more each a second later: a clock
    # started at the first batch saw 3 batches in 1 s, 1.5x the truth of 4 batches in 2 s.
    assert bench.loader_rate(SlowLoader(clock, 0.0, [1.0, 0.0, 1.0, 0.0], batch_size=1)) == pytest.approx(4 / 2.0)


def test_worker_rounds_alternate_the_order_and_time_every_pass(clock):
    calls: List[str] = []
    loaders = {
        1: SlowLoader(clock, 0.5, [1.0, 1.0], batch_size=2, calls=calls, name="1"),
        2: SlowLoader(clock, 0.5, [0.5, 0.5], batch_size=2, calls=calls, name="2"),
    }
    rates = bench.worker_rounds(loaders, rounds=4)
    assert calls == ["1", "2", "2", "1", "1", "2", "2", "1"]
    assert rates[1] == pytest.approx([4 / 2.5] * 4) and rates[2] == pytest.approx([4 / 1.5] * 4)


def test_rounds_are_printed_side_by_side_with_their_ratios_and_median(capsys):
    bench.print_worker_rounds({1: [10.0, 10.0, 12.0], 2: [18.0, 20.0, 30.0]}, item=10.0)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [row[-1] for row in rows] == ["1.80", "2.00", "2.50"]
    median = next(line for line in out.splitlines() if line.split()[0] == "median").split()
    assert median[1:4] == ["10.0", "20.0", "2.00"]  # medians of the columns and of the per-round ratios


@pytest.mark.slow
def test_the_bench_runs_with_its_smallest_settings(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "bench/data_pipeline.py",
            "--videos",
            "2",
            "--size",
            "64",
            "--frames",
            "24",
            "--num-frames",
            "4",
            "--sampling-rate",
            "2",
            "--crop",
            "32",
            "--repeats",
            "1",
            "--batch-size",
            "1",
            "--rounds",
            "2",
            "--dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(b) dataset __getitem__" in proc.stdout
    assert re.search(r"^\s+median\s+[\d.]+\s+[\d.]+\s+[\d.]+", proc.stdout, re.M), proc.stdout
