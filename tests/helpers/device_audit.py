"""Find tensors the suite makes without saying on which device: the CPU-side check for GPU device bugs.

On a CPU-only machine a tensor made with `torch.zeros(())` lands on the CPU, where everything else is, so
a test passes that crashes on a GPU (`loss_sum += loss`: cuda:0 and cpu). `DeviceAudit` is a
`TorchFunctionMode`: while it is active, every call of a tensor factory (zeros, ones, empty, full,
tensor, arange, rand*, ...) that passes no `device=` and comes from the suite's own code (launch/,
and models/ outside constructors and weight initialisation) is recorded with its file, line and
function. A device-correct loop makes every tensor on the engine's device, or says `device="cpu"`
where a CPU tensor is meant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Set, Tuple

import torch
from torch.overrides import TorchFunctionMode

REPO = Path(__file__).resolve().parents[2]
TORCH = Path(torch.__file__).parent
DATA_LOADING = TORCH / "utils" / "data"  # batches are collated on the CPU (and pinned) on purpose
FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.tensor,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.eye,
    torch.linspace,
    torch.as_tensor,
    torch.scalar_tensor,
}
# Functions of models/ that build a module: tensors made there are moved with the module (`.to(device)`).
BUILDERS = ("__init__", "reset_parameters", "init_weights", "_init_weights")


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    function: str
    factory: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}(): torch.{self.factory}(...) without device="


def _suite_caller() -> Tuple[str, int, str] | None:
    """(file, line, function) of the innermost frame of the suite's own code, if the call comes from it."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(REPO) and path.parts[len(REPO.parts)] in ("launch", "models"):
            rel = path.relative_to(REPO)
            if rel.parts[0] == "models" and frame.f_code.co_name in BUILDERS:
                return None
            return str(rel), frame.f_lineno, frame.f_code.co_name
        if path.is_relative_to(DATA_LOADING):
            return None
        if not (path.is_relative_to(TORCH) or "<" in str(path)):
            return None  # called from elsewhere (a test, a library) before reaching the suite
        frame = frame.f_back
    return None


class DeviceAudit(TorchFunctionMode):
    """Records tensor factories called by the suite without `device=` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.findings: Set[Finding] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            caller = _suite_caller()
            if caller is not None:
                self.findings.add(Finding(*caller, func.__name__))
        return func(*args, **kwargs)

    def report(self) -> List[str]:
        """The findings, one line each, sorted."""
        return sorted(map(str, self.findings))
