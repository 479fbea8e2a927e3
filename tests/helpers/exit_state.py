"""launch/train.py's main, then one line saying what it left of torch.distributed, for the exit tests:

rank R: process groups left N, initialized True|False, gloo threads left M
"""

import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch.distributed as dist  # noqa: E402
from torch.distributed import distributed_c10d as c10d  # noqa: E402

from action_launch.train import main  # noqa: E402


def gloo_threads() -> int:
    """Threads of this process that gloo started (its TCP loops and the process groups' worker loops)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sum(name.startswith(("gloo", "pt_gloo")) for name in names)


if __name__ == "__main__":  # DataLoader workers then start from a forkserver, as under launch/train.py
    code = main(sys.argv[1:])
    print(
        f"rank {os.environ.get('RANK', '0')}: process groups left {len(c10d._world.pg_map)}, "
        f"initialized {dist.is_initialized()}, gloo threads left {gloo_threads()}",
        flush=True,
    )
    sys.exit(code)
