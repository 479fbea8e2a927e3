"""Private APIs of other libraries: replaced where a public way exists; where none does, each use says so with
`# private API: <why>` on its line or on a comment line right above it, so the list of them is one grep
(`grep -rn "private API:" launch/`) and a new one is
a decision, not an accident.

A private use is an attribute `obj._name` (not dunder) of an object other than `self`/`cls`, where `_name` is not an
attribute of one of our own classes; a `getattr`/`setattr`/`hasattr` of such a name; or an import of a private name
or module from another package."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set

from conftest import REPO

MARK = "# private API:"
DOCUMENTED = {("os", "_exit")}  # underscore names that their library documents as public


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_attributes(root: Path) -> Set[str]:
    """The private names our own classes define (methods, class attributes, `self._x = ...`)."""
    names: Set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif (
                        isinstance(item, ast.Attribute)
                        and isinstance(item.ctx, ast.Store)
                        and isinstance(item.value, ast.Name)
                        and item.value.id in ("self", "cls")
                    ):
                        names.add(item.attr)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
    return {n for n in names if _private(n)}


def private_uses(path: Path, own: Set[str]) -> List[int]:
    """Lines of `path` that use a private name of another library."""
    tree = ast.parse(path.read_text())
    ours = set()  # names bound to our own modules and objects by imports
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("action_launch"):
            ours |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            base = node.value
            if isinstance(base, ast.Name) and (
                base.id in ("self", "cls") or base.id in ours or (base.id, node.attr) in DOCUMENTED
            ):
                continue
            found.append(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(node)
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("action_launch")
        ):
            parts = (node.module or "").split(".")
            if any(_private(part) for part in parts) or any(_private(a.name) for a in node.names):
                found.append(node)
        elif isinstance(node, ast.Import) and any(_private(p) for a in node.names for p in a.name.split(".")):
            found.append(node)
    return sorted({n.lineno for n in found})


def unmarked(root: Path) -> List[str]:
    """`file:line: text` of every private use under `root` whose statement carries no `# private API:` comment."""
    own = own_attributes(root)
    out = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for lineno in private_uses(path, own):
            above = lines[lineno - 2].strip() if lineno > 1 else ""
            if MARK not in lines[lineno - 1] and not (above.startswith("#") and MARK in above):
                out.append(f"{path.relative_to(root.parent)}:{lineno}: {lines[lineno - 1].strip()}")
    return out


def test_every_private_api_use_says_why():
    assert unmarked(REPO / "launch") == []


def test_the_check_sees_each_kind_of_private_use(tmp_path):
    root = tmp_path / "launch"
    root.mkdir()
    (root / "own.py").write_text(
        "class Mine:\n    def _helper(self):\n        self._state = 1\n        self.module._compiled_call_impl = None\n"
    )
    (root / "uses.py").write_text(
        "import os\nimport torch._dynamo\nfrom submitit.slurm.slurm import _make_sbatch_string\n"
        "from action_launch.training import checkpoint as ckpt\n\n"
        "def f(scheduler, executor, mine, forkserver):\n"
        "    scheduler._last_lr = [0.1]\n"
        "    inner = executor._executor  # private API: submitit has no public getter\n"
        "    getattr(forkserver, '_forkserver', None)\n"
        "    mine._helper(), mine._state, ckpt._anything, os._exit, scheduler.__dict__\n"
    )
    assert [line.split(": ", 1)[0] for line in unmarked(root)] == [
        "launch/own.py:4",
        "launch/uses.py:2",
        "launch/uses.py:3",
        "launch/uses.py:7",
        "launch/uses.py:9",
    ]
