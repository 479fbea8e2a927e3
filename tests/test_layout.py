"""The house rules of the layout, checked on the files themselves (no network; about 20 s on two cores).

- Imports (read with `ast`, at any depth, lazy ones inside functions included): one place per backend
  (DeepSpeed, MLflow, submitit, Ray); models/ and datasets/ below everything; the rooms of launch/ in
  their order; no library module importing a command; every folder imported as `action_launch.*`.
- setup.cfg lists every package, and a real (non-editable) wheel holds them as `action_launch/...`.
- The project installs beside Hugging Face `datasets` and both import.
- Commands stay thin (parse_args/main) and `--help` works from anywhere without loading torch.

Each checker takes the root of a tree, so the tests also run it on small broken trees and see it fail.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest
from conftest import REPO

PACKAGE = "action_launch"
FOLDERS = {"launch": PACKAGE, "models": f"{PACKAGE}.models", "datasets": f"{PACKAGE}.datasets"}
"""Checkout folder -> the package it installs as (setup.cfg's package_dir)."""
ROOMS = ("common", "config", "tracking", "training", "evaluation", "sweeps", "cluster")
"""The library's rooms under launch/, in import order: a room imports only rooms before it."""
COMMANDS = ("train", "submit", "tune", "test", "compare", "explain", "ensemble", "track")
"""The user commands, launch/<name>.py."""
BACKENDS = {
    "deepspeed": "launch/training/engine.py",
    "mlflow": "launch/tracking/",
    "submitit": "launch/cluster/",
    "ray": "launch/sweeps/",
}
"""Third-party package -> the one file (or folder, ending in /) allowed to import it."""
EXEMPT = {"bench", "tests"}
"""Top-level folders the import rules do not cover."""
SKIP_DIRS = {"build", "dist", "runs", "data"}
"""Top-level folders that are never source: build outputs, run folders, data sets (nor are hidden folders,
*.egg-info and __pycache__ anywhere)."""
HEAVY = ("torch", "deepspeed", "ray", "mlflow", "submitit")
"""Packages a command's --help should not load."""

RULES = {
    **{pkg: f"only {where}{'*' if where.endswith('/') else ''} imports {pkg}" for pkg, where in BACKENDS.items()},
    "below": "models/ and datasets/ import nothing of action_launch outside action_launch.models and "
    "action_launch.datasets",
    "rooms": "a room imports only rooms before it (" + " -> ".join(ROOMS) + "); launch/__init__.py imports no room",
    "commands": "no library module imports a command (" + ", ".join(f"{PACKAGE}.{c}" for c in COMMANDS) + ")",
    "namespace": "launch/, models/, datasets/ are imported as action_launch.* (top-level `datasets` is Hugging Face's)",
    "exists": "an imported action_launch module exists",
}
"""Rule id -> what it says (the text of every violation message)."""


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the tree's root, with /
    line: int
    rule: str
    imported: str  # the module the line imports

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported}; rule: {RULES[self.rule]}"


@dataclass(frozen=True)
class _Import:
    line: int
    module: str  # absolute dotted name


def source_files(root: Path) -> List[str]:
    """Every .py file of the tree the rules cover, relative and sorted (bench/, tests/ and build outputs left out)."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [
            d
            for d in dirs
            if not (
                d.startswith(".")
                or d == "__pycache__"
                or d.endswith(".egg-info")
                or (rel == Path(".") and (d in EXEMPT or d in SKIP_DIRS))
            )
        ]
        found += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    return sorted(found)


def module_of(path: str) -> Optional[str]:
    """The installed module name of a checkout file (None outside launch/, models/, datasets/)."""
    parts = path[: -len(".py")].split("/")
    if parts[0] not in FOLDERS or len(parts) < 2:
        return None
    rest = parts[1:-1] if parts[-1] == "__init__" else parts[1:]
    return ".".join([FOLDERS[parts[0]], *rest])


def _resolve(name: str, level: int, package: Optional[str]) -> Optional[str]:
    """The absolute name of a relative import `level` dots up from `package` (None if it cannot be)."""
    if level == 0:
        return name
    if not package:
        return None
    base = package.split(".")
    if level - 1 >= len(base):
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _dynamic_import(node: ast.Call, module: Optional[str], package: Optional[str]) -> Optional[str]:
    """The module named by importlib.import_module("...") / __import__("...") with a literal name."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    if not (named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return None
    name = node.args[0].value
    level = len(name) - len(name.lstrip("."))
    if level == 0:
        return name
    anchor = node.args[1] if len(node.args) > 1 else None  # import_module(".x", __name__ / __package__)
    base = {"__name__": module, "__package__": package}.get(anchor.id) if isinstance(anchor, ast.Name) else None
    return _resolve(name[level:], level, base)


def imports_of(tree: ast.AST, module: Optional[str], is_package: bool, known: Set[str]) -> Iterator[_Import]:
    """Every module a file imports, anywhere in it (functions, branches, try blocks, dynamic imports)."""
    package = module if is_package else (module.rpartition(".")[0] if module else None)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _Import(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, package)
            if base is None:
                continue
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            # `from action_launch import datasets` imports the subpackage; the package itself counts only
            # when a name is not a submodule (`from action_launch import ROOT`)
            if len(subs) < len(node.names):
                yield _Import(node.lineno, base)
            for sub in subs:
                yield _Import(node.lineno, sub)
        elif isinstance(node, ast.Call):
            name = _dynamic_import(node, module, package)
            if name:
                yield _Import(node.lineno, name)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _allowed(path: str, where: str) -> bool:
    return path.startswith(where) if where.endswith("/") else path == where


def _room_of(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in ROOMS else None


def import_violations(path: str, source: str, known: Set[str]) -> List[Violation]:
    """What the imports of one file (`path` relative to the tree's root) break."""
    module = module_of(path)
    tree = ast.parse(source, filename=path)
    commands = {f"{PACKAGE}.{c}" for c in COMMANDS}
    below = path.split("/")[0] in ("models", "datasets")
    own_room = _room_of(module) if module else None
    found = []
    for imp in imports_of(tree, module, path.endswith("__init__.py"), known):
        top = imp.module.split(".")[0]
        broken = []
        if top in BACKENDS and not _allowed(path, BACKENDS[top]):
            broken.append(top)
        if top in ("launch", "models", "datasets"):
            broken.append("namespace")
        if top == PACKAGE:
            if imp.module not in known:
                broken.append("exists")
            if below and not (_within(imp.module, f"{PACKAGE}.models") or _within(imp.module, f"{PACKAGE}.datasets")):
                broken.append("below")
            if module is not None and module not in commands and any(_within(imp.module, c) for c in commands):
                broken.append("commands")
            room = _room_of(imp.module)
            if room and module == PACKAGE or room and own_room and ROOMS.index(room) > ROOMS.index(own_room):
                broken.append("rooms")
        found += [Violation(path, imp.line, rule, imp.module) for rule in broken]
    return found


def check_imports(root: Path) -> List[Violation]:
    """Every import-rule violation of the tree at `root` (a checkout, or a test's small tree)."""
    files = source_files(root)
    known = {m for m in map(module_of, files) if m}
    found = []
    for path in files:
        found += import_violations(path, (root / path).read_text(encoding="utf-8"), known)
    return sorted(set(found), key=lambda v: (v.path, v.line, v.rule))


def _write(root: Path, files: Dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


# The import rules on this checkout ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout_violations() -> List[Violation]:
    return check_imports(REPO)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule_holds(rule, checkout_violations):
    broken = [str(v) for v in checkout_violations if v.rule == rule]
    assert not broken, "\n".join(broken)


def test_the_rules_see_the_whole_library():
    files = source_files(REPO)
    for expected in [
        "launch/train.py",
        "launch/training/engine.py",
        "launch/cluster/executor.py",
        "models/tsm.py",
        "datasets/video.py",
    ]:
        assert expected in files
    assert not [f for f in files if f.split("/")[0] in EXEMPT]
    rooms = {p.name for p in (REPO / "launch").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(ROOMS), "a new room of launch/ needs its place in ROOMS (the import order)"
    assert {p.stem for p in (REPO / "launch").glob("*.py")} - {"__init__"} == set(COMMANDS)


# The checker on small broken trees: each rule catches its violation, at its file and line -----------------

_CLEAN = {
    "launch/__init__.py": "import os\n",
    "launch/train.py": "from action_launch.training.engine import Engine\nimport action_launch.test\n",
    "launch/test.py": "def main():\n    from action_launch.evaluation import evaluate\n",
    "launch/common/__init__.py": "",
    "launch/training/__init__.py": "",
    "launch/training/engine.py": "def start():\n    import deepspeed\n    from action_launch.common import files\n",
    "launch/evaluation/__init__.py": "from .evaluate import run\nfrom action_launch.training import engine\n",
    "launch/evaluation/evaluate.py": "from action_launch import ROOT, datasets\nfrom action_launch.models import tsm\n",
    "launch/tracking/__init__.py": "import mlflow.tracking\n",
    "launch/sweeps/__init__.py": "from ray import tune\n",
    "launch/cluster/__init__.py": "import submitit\nfrom action_launch.sweeps import run\n",
    "models/__init__.py": "",
    "models/tsm.py": "import torch\nfrom . import graphs\n",
    "models/graphs.py": "import numpy\n",
    "datasets/__init__.py": (
        "import importlib\n\ndef build():\n    return importlib.import_module('.video', __name__)\n"
    ),
    "datasets/video.py": "from action_launch.models.graphs import bones\nimport decord\n",
    "bench/engine.py": "import deepspeed\nimport mlflow\nfrom action_launch import train\n",
    "tests/test_x.py": "import ray\nimport submitit\nimport datasets\n",
    "setup.py": "import setuptools\n",
}

_BROKEN = [  # (file, its text, the rule it breaks, at line)
    ("launch/training/trainer.py", "import torch\n\n\ndef fit():\n    import deepspeed.comm\n", "deepspeed", 5),
    ("models/tsm.py", "import torch\nfrom deepspeed.ops import adam\n", "deepspeed", 2),
    ("launch/training/engine.py", "def log():\n    if True:\n        from mlflow import log_metric\n", "mlflow", 3),
    ("launch/train.py", "import mlflow\n", "mlflow", 1),
    ("launch/sweeps/__init__.py", "try:\n    import submitit\nexcept ImportError:\n    pass\n", "submitit", 2),
    ("launch/cluster/__init__.py", "import ray.util\n", "ray", 1),
    ("datasets/video.py", "import importlib\nimportlib.import_module('ray')\n", "ray", 2),
    ("models/graphs.py", "from action_launch.training import engine\n", "below", 1),
    ("datasets/video.py", "from action_launch import ROOT\n", "below", 1),
    ("models/graphs.py", "class A:\n    def f(self):\n        from action_launch.common import files\n", "below", 3),
    ("launch/common/__init__.py", "from action_launch.training.engine import start\n", "rooms", 1),
    ("launch/training/engine.py", "def f():\n    import action_launch.evaluation.evaluate\n", "rooms", 2),
    ("launch/tracking/__init__.py", "from ..sweeps import run\n", "rooms", 1),
    ("launch/__init__.py", "from action_launch import common\n", "rooms", 1),
    ("launch/evaluation/evaluate.py", "from action_launch import test\n", "commands", 1),
    ("launch/cluster/__init__.py", "def job():\n    from action_launch.train import main\n", "commands", 2),
    ("datasets/video.py", "from .. import train\n", "commands", 1),
    ("datasets/video.py", "from datasets.config import DataConfig\n", "namespace", 1),
    ("launch/training/engine.py", "import models.tsm\n", "namespace", 1),
    ("launch/train.py", "from launch.training import engine\n", "namespace", 1),
    ("launch/train.py", "from action_launch.slurm_launcher import submit\n", "exists", 1),
]


def test_checker_passes_a_clean_tree(tmp_path):
    assert check_imports(_write(tmp_path, _CLEAN)) == []


@pytest.mark.parametrize("path,text,rule,line", _BROKEN, ids=[f"{b[2]}:{b[0]}" for b in _BROKEN])
def test_checker_catches(tmp_path, path, text, rule, line):
    found = check_imports(_write(tmp_path, {**_CLEAN, path: text}))
    assert (path, line, rule) in {(v.path, v.line, v.rule) for v in found}, found
    assert any(str(v).startswith(f"{path}:{line}: imports ") and str(v).endswith(RULES[rule]) for v in found)


def test_every_rule_has_a_broken_tree():
    assert {rule for _, _, rule, _ in _BROKEN} == set(RULES)


# setup.cfg lists every package; a real wheel holds them under action_launch/ --------------------------


def _setup_cfg(root: Path) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg", encoding="utf-8")
    return cfg


def package_folders(root: Path) -> Dict[str, str]:
    """Installed package name -> checkout folder, for every folder holding an __init__.py."""
    found = {}
    for folder, top in FOLDERS.items():
        for init in (root / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(root / folder).parts
            found[".".join([top, *parts])] = init.parent.relative_to(root).as_posix()
    return found


def package_list_problems(root: Path) -> List[str]:
    """How setup.cfg's package_dir/packages and the folders of the tree at `root` disagree."""
    options = _setup_cfg(root)["options"]
    problems = []
    package_dir = {
        key.strip(): value.strip()
        for key, value in (line.split("=", 1) for line in options["package_dir"].strip().splitlines())
    }
    expected_dir = {top: folder for folder, top in FOLDERS.items()}
    if package_dir != expected_dir:
        problems.append(f"setup.cfg package_dir is {package_dir}, expected {expected_dir}")
    listed = set(options["packages"].split())
    folders = package_folders(root)
    for name in sorted(set(folders) - listed):
        problems.append(f"{folders[name]}/__init__.py: package {name} is missing from setup.cfg `packages =`")
    for name in sorted(listed - set(folders)):
        problems.append(f"setup.cfg `packages =` lists {name}, which has no folder with an __init__.py")
    for folder in FOLDERS:
        for py in (root / folder).rglob("*.py"):
            if not (py.parent / "__init__.py").is_file():
                problems.append(f"{py.relative_to(root)}: its folder has no __init__.py, so no install holds it")
    return sorted(set(problems))


def test_setup_cfg_lists_every_package():
    assert package_list_problems(REPO) == []


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"launch/newroom/__init__.py": "", "launch/newroom/job.py": ""}, "package action_launch.newroom is missing"),
        ({"models/layers/__init__.py": ""}, "package action_launch.models.layers is missing"),
        ({"launch/helpers/util.py": ""}, "launch/helpers/util.py: its folder has no __init__.py"),
    ],
)
def test_package_list_check_catches(tmp_path, change, expected):
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path)
    assert package_list_problems(tmp_path) == []
    _write(tmp_path, change)
    assert any(expected in p for p in package_list_problems(tmp_path)), package_list_problems(tmp_path)


def test_package_list_check_catches_a_stale_entry(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path)
    shutil.rmtree(tmp_path / "launch" / "sweeps")
    assert any("lists action_launch.sweeps" in p for p in package_list_problems(tmp_path))


def build_wheel(root: Path, work: Path) -> Path:
    """A real wheel of the tree at `root`, built from a copy in `work` (no build/ or egg-info lands in `root`)."""
    src, out = work / "src", work / "wheel"
    for folder in FOLDERS:
        shutil.copytree(root / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [built] = out.glob("action_launch-*.whl")
    return built


def wheel_problems(wheel: Path, root: Path) -> List[str]:
    """How the wheel differs from the tree at `root`: each source file under its installed name, nothing else."""
    names = set(zipfile.ZipFile(wheel).namelist())
    problems = [f"{n}: a checkout folder in the wheel" for n in sorted(names) if n.split("/")[0] in FOLDERS]
    expected = {
        module_of(f).replace(".", "/") + ("/__init__.py" if f.endswith("__init__.py") else ".py")
        for f in source_files(root)
        if module_of(f)
    }
    built = {n for n in names if n.endswith(".py")}
    problems += [f"{n}: missing from the wheel" for n in sorted(expected - built)]
    problems += [f"{n}: in the wheel, not in the checkout" for n in sorted(built - expected)]
    return problems


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("build"))


def test_wheel_holds_the_package_as_installed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "action_launch/training/engine.py",
        "action_launch/models/tsm.py",
        "action_launch/datasets/video.py",
    ]:
        assert expected in names
    assert wheel_problems(wheel, REPO) == []


def test_wheel_installs_and_runs_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import json, action_launch, action_launch.config, action_launch.datasets, action_launch.models; "
        "print(json.dumps([m.__file__ for m in (action_launch, action_launch.config, action_launch.datasets, "
        "action_launch.models)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for file in json.loads(proc.stdout):
        assert Path(file).is_relative_to(site), file
    proc = subprocess.run(
        [sys.executable, "-m", "action_launch.train", "--print-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "model:" in proc.stdout, proc.stderr


# Beside Hugging Face `datasets` ------------------------------------------------------------------------


def import_both_datasets(cwd: Path) -> Dict[str, object]:
    """`import datasets; import action_launch.datasets as ours` in a fresh interpreter started in `cwd`."""
    code = (
        "import json, datasets, action_launch.datasets as ours; "
        "print(json.dumps({'hf': datasets.__file__, 'load_dataset': callable(getattr(datasets, 'load_dataset', None)), "
        "'ours': ours.__file__, 'build': callable(getattr(ours, 'build', None))}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"{proc.stderr}\n(Hugging Face `datasets` is in the dev extra: pip install -e '.[dev]')"
    )
    return json.loads(proc.stdout)


def test_installs_beside_hugging_face_datasets(tmp_path):
    # from a folder of the user's, as their own script would: `python -c` or `python -m` started in the checkout
    # root put the root first on sys.path, where `datasets` is our folder and shadows Hugging Face's
    found = import_both_datasets(tmp_path)
    assert found["load_dataset"] and found["build"]
    assert "site-packages" in Path(found["hf"]).parts, found["hf"]
    assert Path(found["ours"]) == REPO / "datasets" / "__init__.py"


def test_print_config_beside_hugging_face_datasets():
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "--print-config"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "model:" in proc.stdout and "data:" in proc.stdout


# Commands stay thin and run as the user runs them ----------------------------------------------------------


def command_problems(path: Path) -> List[str]:
    """Top-level functions other than parse_args/main, classes and lambdas of a command file (branches of
    `if`/`try`/`with` at module level included: they are top level too)."""
    problems = []
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
                if node.name not in ("parse_args", "main"):
                    problems.append(
                        f"{path.name}:{node.lineno}: function {node.name} (a command defines only parse_args/main)"
                    )
            elif isinstance(node, ast.ClassDef):
                problems.append(f"{path.name}:{node.lineno}: class {node.name} (a command defines no class)")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda):
                problems.append(
                    f"{path.name}:{node.lineno}: a lambda at module level (a command defines only parse_args/main)"
                )
            else:  # if/try/with/for at module level: their branches are top level too
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    if "main" not in names:
        problems.append(f"{path.name}: no main()")
    return problems


@pytest.mark.parametrize("command", COMMANDS)
def test_command_is_thin(command):
    assert command_problems(REPO / "launch" / f"{command}.py") == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("def main():\n    pass\n\n\ndef _helper():\n    pass\n", "x.py:5: function _helper"),
        ("class Job:\n    pass\n\n\ndef main():\n    pass\n", "x.py:1: class Job"),
        (
            "try:\n    import yaml\nexcept ImportError:\n    def load():\n        pass\n\n\ndef main():\n    pass\n",
            "x.py:4: function load",
        ),
        ("if True:\n    helper = lambda: 1\n\n\ndef main():\n    pass\n", "x.py:2: a lambda"),
        ("def parse_args():\n    pass\n", "x.py: no main()"),
    ],
)
def test_command_check_catches(tmp_path, text, expected):
    (tmp_path / "x.py").write_text(text)
    assert any(p.startswith(expected) for p in command_problems(tmp_path / "x.py")), command_problems(tmp_path / "x.py")


def run_help(script: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python -X importtime SCRIPT --help` from `cwd` (the import list goes to stderr)."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def help_problems(proc: subprocess.CompletedProcess) -> List[str]:
    """What is wrong with a command's --help run: a failure, no usage text, heavy imports (torch, the backends)."""
    if proc.returncode != 0:
        return [
            f"exit {proc.returncode}: "
            + "\n".join(l for l in proc.stderr.splitlines() if not l.startswith("import time:"))
        ]
    if not proc.stdout.startswith("usage:"):
        return [f"no usage text: {proc.stdout[:200]!r}"]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    heavy = sorted(set(HEAVY) & imported)
    if heavy:
        return [f"--help imports {heavy}: import them after parsing the arguments"]
    return []


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_from_anywhere(command, where, tmp_path):
    # an absolute script path and the user's cwd, as `python /path/to/launch/train.py --help` from anywhere
    proc = run_help(REPO / "launch" / f"{command}.py", REPO if where == "checkout" else tmp_path)
    assert help_problems(proc) == []


def test_each_public_function_and_class_has_one_home():
    """One concept, one place: no two modules of `launch/` define a public function or class of the same name (a
    copied helper, such as `last_exception_line` in `common/console.py` and `sweeps/trial.py`, drifts apart).
    The commands' own `main` and `parse_args` are theirs."""
    homes: Dict[str, List[str]] = {}
    for path in sorted((REPO / "launch").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    twice = {name: paths for name, paths in homes.items() if len(paths) > 1 and name not in ("main", "parse_args")}
    assert twice == {}
