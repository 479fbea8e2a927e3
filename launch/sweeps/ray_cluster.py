"""Joining a Ray cluster that a Slurm sweep job brought up across its nodes."""

from __future__ import annotations

import os
import time


def wait_for_nodes(address: str, count: int, timeout_s: float) -> None:
    """Wait until `count` nodes are alive in the Ray cluster at `address` (TimeoutError after `timeout_s`);
    later Ray calls of this process (the sweep) connect to it through `RAY_ADDRESS`."""
    import ray

    os.environ["RAY_ADDRESS"] = address
    deadline = time.time() + timeout_s
    ray.init(address=address, log_to_driver=False)
    try:
        while time.time() < deadline:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            if len(alive) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"only {len(alive)} of {count} Ray nodes joined {address} within {timeout_s:.0f} s")
    finally:
        ray.shutdown()
