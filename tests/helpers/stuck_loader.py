"""DataLoader workers under faults, for the fault tests: `make_loader` must raise, not hang, or carry on.

    python tests/helpers/stuck_loader.py hang TIMEOUT_S       a worker's __getitem__ never returns
    python tests/helpers/stuck_loader.py held-lock TIMEOUT_S  a thread of this process holds a lock the
                                                              dataset takes, while the workers start
    python tests/helpers/stuck_loader.py signalled TIMEOUT_S  after the first batch, every process this one
                                                              started gets SIGUSR1 and SIGUSR2, as Slurm
                                                              signals every process of a job step

Prints `batches N` once the loader delivered them all. A worker forked from this process inherits the
held lock locked and waits for ever (the fork-after-threads hang); one started by a forkserver does not.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402
from torch.utils.data import Dataset, SequentialSampler  # noqa: E402

from action_launch.datasets.config import DataConfig  # noqa: E402
from action_launch.training.loaders import make_loader  # noqa: E402

LOCK = threading.Lock()


class Clips(Dataset):
    """Four constant clips; in a worker, `hang` never returns and `held-lock` takes LOCK first; `signalled` clips
    take a moment each (the signals come while a batch is being made)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.mode == "hang":
            while True:
                time.sleep(1)
        if in_worker and self.mode == "signalled":
            time.sleep(0.5)
        with LOCK:
            return torch.full((3,), float(index)), index


def main(mode: str, timeout_s: float) -> None:
    held = threading.Event()

    def hold() -> None:
        with LOCK:
            held.set()
            time.sleep(3600)

    if mode == "held-lock":
        threading.Thread(target=hold, daemon=True).start()
        held.wait()
    dataset = Clips(mode)
    cfg = DataConfig(num_workers=1, persistent_workers=False)
    loader = make_loader(
        dataset, SequentialSampler(dataset), 2, cfg, seed=0, drop_last=False, timeout_s=timeout_s, name="validation"
    )
    batches = 0
    for _ in loader:
        batches += 1
        if mode == "signalled" and batches == 1:
            signal_descendants()
    print(f"batches {batches}", flush=True)


def signal_descendants() -> None:
    """SIGUSR1 and SIGUSR2 to every process below this one (its workers, the forkserver, the resource tracker),
    then a moment for them to act."""
    from action_launch.common.processes import descendants

    for pid in descendants(os.getpid()):
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            os.kill(pid, sig)
    time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
