"""The install keeps a cluster's torch (issue 24, item 5): `install_requires` gives torch and DeepSpeed a range, not a
pin, and the exact CPU pin of the demo set-up stays in the Makefile, inside that range."""

from __future__ import annotations

import configparser
import re
from typing import Dict

from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version


def _install_requires() -> Dict[str, Requirement]:
    """setup.cfg's `install_requires`, by project name (comment lines dropped as setuptools drops them)."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {req.name: req for req in reqs}


def test_torch_and_deepspeed_are_ranges_that_hold_the_tested_versions():
    """`torch==2.13.0` replaced a CUDA node's torch on `pip install -e .`; the GPU machine has 2.11, the CPU 2.13."""
    reqs = _install_requires()
    torch, deepspeed = reqs["torch"].specifier, reqs["deepspeed"].specifier
    assert not any(spec.operator in ("==", "===", "~=") for spec in torch), f"torch is pinned: {torch}"
    for version in ("2.11.0", "2.11.0+cu128", "2.12.1", "2.13.0", "2.13.0+cpu"):
        assert torch.contains(version, prereleases=False), f"torch {version} is outside {torch}"
    assert not torch.contains("2.10.0"), "the oldest torch the suite has run on is 2.11 (the GPU machine)"
    assert not any(spec.operator in ("==", "===") for spec in deepspeed), f"deepspeed is pinned: {deepspeed}"
    assert deepspeed.contains("0.19.8") and deepspeed.contains("0.18.0") and not deepspeed.contains("0.17.6")


def test_the_makefile_pins_the_cpu_torch_first_and_inside_the_range():
    """The demo's set-up installs one exact CPU torch before the package, so pip never re-resolves it."""
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"pip install -q torch==(\S+)", makefile)
    assert pin, "the Makefile no longer installs an exact torch first"
    assert makefile.index(pin.group(0)) < makefile.index("pip install -q -e"), "torch must come before the package"
    assert _install_requires()["torch"].specifier.contains(Version(pin.group(1)))
