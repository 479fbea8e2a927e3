"""Unreadable files skipped during a run: one log line each in the suite's format, and a count in the summary."""

import re
from pathlib import Path

import pytest
from conftest import free_port, run_train, tiny_overrides

# setup_logging's format: "%(asctime)s %(levelname)s %(name)s: %(message)s", time as %H:%M:%S
SKIP_LINE = re.compile(r"^\d\d:\d\d:\d\d WARNING [\w.]+: skipping unreadable video (\S+): (.+)$")


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_skipped_files_are_logged_in_one_line_and_counted_in_the_summary(video_set, tmp_path, deepspeed_ready, world):
    """Two bad files in the val list (read whole every validation): each is said once in the suite's log format,
    no Python warning with its echoed source line, and the closing summary counts them and names the log. On two
    ranks each finds one (rank r validates items r, r+2, ...: empty.mp4 is item 3, junk.mp4 item 6), and rank 0's
    summary still counts the run's two."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mp4").write_bytes(b"\x00junk" * 40)
    for split in ("train", "val"):
        lines = [f"{video_set / line}" for line in (video_set / f"{split}.txt").read_text().splitlines()]
        if split == "val":
            lines.insert(3, f"{root / 'empty.mp4'} 0")
            lines.insert(6, f"{root / 'junk.mp4'} 1")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text((video_set / "classes.txt").read_text())
    args = tiny_overrides(root, tmp_path / "out", "skips") + [
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
        "data.max_bad_fraction=0.2",
    ]
    if world == 1:
        proc = run_train(args)
    else:  # gloo on the CPU, as a user starts it
        proc = run_train(
            [
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                str(free_port()),
                "launch/train.py",
                *args,
            ],
            script="-m",
        )
    output = proc.stdout + proc.stderr
    assert "RuntimeWarning" not in output and "warnings.warn" not in output
    skipped = [m.groups() for m in map(SKIP_LINE.match, proc.stdout.splitlines()) if m]
    assert sorted(Path(path).name for path, _ in skipped) == ["empty.mp4", "junk.mp4"], output[-3000:]
    assert dict(skipped)[str(root / "empty.mp4")] == "empty file"
    log = tmp_path / "out" / "tests" / "skips" / "bad_files.tsv"
    assert f"skipped 2 unreadable videos (listed in {log})" in proc.stdout
