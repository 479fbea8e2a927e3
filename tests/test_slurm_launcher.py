"""`launch/submit.py` without a cluster: config resolution, grids, batch layout, the sbatch script, snapshots,
`--status` of local jobs.

The sbatch scripts of a training job and of a sweep job are compared whole with golden files in
tests/data/ (output folder and Python path as placeholders). After a deliberate change, regenerate them:
    REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_slurm_launcher.py -k sbatch
and review the diff of tests/data/*.sbatch."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from action_launch.cluster.executor import make_executor
from action_launch.cluster.jobs import write_job_json
from action_launch.cluster.plan import (
    check_script_values,
    describe,
    parse_time_minutes,
    resolve,
    safe_component,
    split_top_level,
)
from action_launch.cluster.snapshot import snapshot_code
from action_launch.config import ConfigError, SlurmConfig


def test_grid_values_split_on_top_level_commas_only():
    assert split_top_level("0.1,0.2") == ["0.1", "0.2"]
    assert split_top_level("[32,36]") == ["[32,36]"]
    assert split_top_level("[1,2],[3,4]") == ["[1,2]", "[3,4]"]
    assert split_top_level("'a,b',c") == ["'a,b'", "c"]
    assert split_top_level("x; rm -rf ~") == ["x; rm -rf ~"]


@pytest.mark.parametrize(
    "text,minutes",
    [
        ("90", 90),
        ("00:30:00", 30),
        ("1:00:00", 60),
        ("10:30", 11),
        ("1-00:00:00", 1440),
        ("2-3", 3060),
        ("00:00:05", 1),
    ],
)
def test_slurm_time_formats(text, minutes):
    assert parse_time_minutes(text) == minutes


def test_bad_time_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="slurm.time"):
        parse_time_minutes("soon")


def test_flags_override_the_slurm_section_and_grids_multiply(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("slurm:\n  nodes: 1\n  partition: cpu\n  time: '02:00:00'\ngrid:\n  seed: [0, 1]\n")
    plans = resolve(
        [str(config)],
        ["optim.lr=0.1,0.2", "data.train_short_side=[32,36]"],
        {"nodes": 4, "qos": "low"},
        check_model=False,
    )
    assert len(plans) == 4
    assert [(p.cfg.seed, p.cfg.optim.lr) for p in plans] == [(0, 0.1), (0, 0.2), (1, 0.1), (1, 0.2)]
    for plan in plans:
        s = plan.cfg.slurm
        assert (s.nodes, s.partition, s.qos, s.time) == (4, "cpu", "low", "02:00:00")
        assert plan.cfg.data.train_short_side == [32, 36]


def test_each_task_of_a_job_array_names_its_mlflow_run_by_its_grid_point(tmp_path):
    """A 2x2 grid: four MLflow run names `<name>/<key=value,...>` (Hydra's form), one run folder name (each task's
    folder is `<name>/<job id>`, which a requeue finds it by); the task index where no grid point tells tasks apart."""
    plans = resolve([], ["name=grid", "optim.lr=0.001,0.01", "data.num_frames=8,16"], {}, check_model=False)
    assert [p.cfg.run_name() for p in plans] == [
        "grid/optim.lr=0.001,data.num_frames=8",
        "grid/optim.lr=0.001,data.num_frames=16",
        "grid/optim.lr=0.01,data.num_frames=8",
        "grid/optim.lr=0.01,data.num_frames=16",
    ]
    assert {p.cfg.name for p in plans} == {"grid"}
    assert (
        "job 4/4 {'optim.lr': 0.01, 'data.num_frames': 16}: default/grid (MLflow run grid/optim.lr=0.01,"
        "data.num_frames=16)" in describe(plans[3], 3, 4)
    )
    # a grid file's values (a list among them), under a run name of the config's own
    config = tmp_path / "c.yaml"
    config.write_text("name: r\ntracking:\n  run_name: mine\ngrid:\n  data.train_short_side: [[32, 36], [40, 44]]\n")
    assert [p.cfg.run_name() for p in resolve([str(config)], [], {}, check_model=False)] == [
        "mine/data.train_short_side=[32,36]",
        "mine/data.train_short_side=[40,44]",
    ]
    # a grid over the name itself: the names tell the tasks apart
    assert [p.cfg.run_name() for p in resolve([], ["name=a,b"], {}, check_model=False)] == ["a", "b"]
    # two configs of one name and no grid: the task index
    other = tmp_path / "d.yaml"
    other.write_text("name: r\nseed: 3\n")
    first = tmp_path / "e.yaml"
    first.write_text("name: r\n")
    assert [p.cfg.run_name() for p in resolve([str(first), str(other)], [], {}, check_model=False)] == ["r/0", "r/1"]
    # one job keeps its name
    (single,) = resolve([], ["name=one"], {}, check_model=False)
    assert single.cfg.run_name() == "one" and single.cfg.tracking.run_name is None


def test_more_nodes_scale_the_lr_or_keep_the_effective_batch():
    base = ["train.micro_batch_size=8", "train.grad_accum=4", "optim.lr=0.1", "optim.base_batch_size=32"]
    (plan,) = resolve([], base, {"nodes": 4}, check_model=False)
    assert (plan.world_size, plan.effective_batch, plan.scaled_lr) == (4, 128, pytest.approx(0.4))
    (kept,) = resolve([], [*base, "optim.keep_effective_batch=true"], {"nodes": 4}, check_model=False)
    assert (kept.cfg.train.grad_accum, kept.effective_batch, kept.scaled_lr) == (1, 32, pytest.approx(0.1))
    with pytest.raises(ConfigError, match="keep_effective_batch"):
        resolve([], [*base, "optim.keep_effective_batch=true"], {"nodes": 3}, check_model=False)


def test_unknown_slurm_key_is_named():
    with pytest.raises(ConfigError, match="slurm.nodez"):
        resolve([], ["slurm.nodez=2"], {}, check_model=False)


DATA = Path(__file__).parent / "data"


def check_golden(script: str, name: str, output_dir: Path) -> None:
    """`script` equals tests/data/<name> once this machine's output folder and Python are placeholders."""
    text = script.replace(str(output_dir), "<OUTPUT_DIR>").replace(sys.executable, "<PYTHON>")
    golden = DATA / name
    if os.environ.get("REGEN_GOLDEN"):
        golden.write_text(text)
    assert text.splitlines() == golden.read_text().splitlines(), (
        f"the sbatch script differs from {golden}; if that is intended: REGEN_GOLDEN=1 pytest {__file__} -k sbatch"
    )


def test_dry_run_prints_the_sbatch_script_without_slurm(tmp_path):
    """A training job of 2 nodes x 4 GPUs: the whole script as sbatch would get it."""
    proc = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            "--dry-run",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--partition",
            "gpu",
            "--time",
            "1:30:00",
            "--mem-gb",
            "64",
            f"output_dir={tmp_path}",
            "name=x; rm -rf ~",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 node(s) x 4 task(s) = world size 8" in proc.stdout
    script = proc.stdout.split("# ---- sbatch script")[1].split("\n", 1)[1].split("\n# ---- resolved config")[0]
    check_golden(script, "train_2x4_gpus.sbatch", tmp_path)
    assert "rm -rf" not in script  # the name reaches the script only as a safe folder name
    assert not tmp_path.joinpath("default").exists()


def test_sweep_dry_run_prints_the_sbatch_script_of_one_job(tmp_path):
    """`tune.py --slurm`: one task per node (the Ray head on the first), every GPU of the node for it."""
    proc = subprocess.run(
        [
            sys.executable,
            "launch/tune.py",
            "--dry-run",
            "--slurm",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--partition",
            "gpu",
            "--time",
            "2:00:00",
            "--name",
            "golden",
            f"output_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check_golden("#!/bin/bash" + proc.stdout.split("#!/bin/bash", 1)[1], "sweep_2_nodes.sbatch", tmp_path)
    assert not tmp_path.joinpath("default").exists()


def test_sweep_job_asks_for_the_memory_of_the_slurm_section(tmp_path):
    """`slurm.mem_gb` reaches a sweep job's script as it does a training job's (tune.py --slurm once ignored it)."""
    proc = subprocess.run(
        [
            sys.executable,
            "launch/tune.py",
            "--dry-run",
            "--slurm",
            "--nodes",
            "2",
            "slurm.mem_gb=32",
            f"output_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("#SBATCH --mem=32GB\n") == 1


@pytest.mark.parametrize(
    "args,option,value",
    [
        (["--job-name", "a\nb"], "--job-name", "a\nb"),
        (["--partition", "gpu\n#SBATCH --exclusive"], "--partition", "gpu\n#SBATCH --exclusive"),
        (["--account", "a\tb"], "--account", "a\tb"),
        (["--time", "01:00:00\r"], "--time", "01:00:00\r"),
        (["slurm.qos=a\x01b"], "slurm.qos", "a\x01b"),
        (['slurm.constraint="a100\\x7f"'], "slurm.constraint", "a100\x7f"),
        (['experiment="x\\ty"'], "experiment", "x\ty"),
    ],
)
def test_control_characters_bound_for_the_sbatch_script_are_refused(tmp_path, args, option, value):
    """A newline in a value would reach the generated script (sbatch refuses it, or reads a new line):
    one error line naming the option with the value's repr, exit 2, nothing printed or written."""
    proc = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            "--config",
            "configs/demo.yaml",
            "--dry-run",
            f"output_dir={tmp_path}",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = (
        f"config error: {option}: {value!r} contains a control character; "
        "a value that reaches the sbatch script may not"
    )
    assert proc.stderr.splitlines() == [error], proc.stderr
    assert proc.stdout == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args,option,value",
    [
        (["--partition", "a\nb"], "--partition", "a\nb"),
        (["--name", "s\nw"], "--name", "s\nw"),
        (["slurm.account=a\x1fb"], "slurm.account", "a\x1fb"),
    ],
)
def test_sweep_job_refuses_control_characters_too(tmp_path, args, option, value):
    proc = subprocess.run(
        [sys.executable, "launch/tune.py", "--dry-run", "--slurm", f"output_dir={tmp_path}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = f"error: {option}: {value!r} contains a control character; a value that reaches the sbatch script may not"
    assert proc.stderr.splitlines() == [error], proc.stderr
    assert "#SBATCH" not in proc.stdout and not any(tmp_path.iterdir())


def test_script_value_check_covers_every_control_character(tmp_path):
    check_script_values({"ok": "gpu-a100_x.y:1 2,3", "number": 4, "none": None, "unicode": "ré"})
    for char in [chr(c) for c in range(0x20)] + ["\x7f"]:
        with pytest.raises(ConfigError, match="--partition"):
            check_script_values({"--partition": f"gpu{char}"})
    with pytest.raises(ConfigError, match="name"):  # every executor, whoever made it, is checked as well
        make_executor(tmp_path / "%j", "slurm", SlurmConfig(), name="a\nb", nodes=1, tasks_per_node=1)
    with pytest.raises(ConfigError, match="slurm_qos"):
        make_executor(tmp_path / "%j", "slurm", SlurmConfig(qos="a\rb"), name="x", nodes=1, tasks_per_node=1)


def test_run_tag_of_an_array_task_is_the_id_submit_printed(monkeypatch):
    """Slurm gives each task of an array its own SLURM_JOB_ID (task 0 of array 22 is job 23); squeue, sacct
    and submit.py call it 22_0."""
    from action_launch.training.trainer import run_tags, slurm_job_id

    assert slurm_job_id({"SLURM_JOB_ID": "23", "SLURM_ARRAY_JOB_ID": "22", "SLURM_ARRAY_TASK_ID": "0"}) == "22_0"
    assert slurm_job_id({"SLURM_JOB_ID": "23"}) == "23"
    assert slurm_job_id({}) is None
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    assert "slurm.job_id" not in run_tags(1)
    monkeypatch.setenv("SLURM_JOB_ID", "23")
    assert run_tags(1)["slurm.job_id"] == "23"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "22")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert run_tags(1)["slurm.job_id"] == "22_0"


def test_code_snapshot_copies_the_tree_once(tmp_path):
    first = snapshot_code(REPO, tmp_path)
    # laid out as installed: launch/ is the action_launch package, models/ and datasets/ inside it
    assert (first / "action_launch" / "training" / "trainer.py").read_text() == (
        REPO / "launch" / "training" / "trainer.py"
    ).read_text()
    assert (first / "action_launch" / "models" / "tsm.py").read_text() == (REPO / "models" / "tsm.py").read_text()
    assert (first / "configs" / "demo.yaml").is_file() and not (first / "launch").exists()
    code = "import action_launch.models, action_launch.training.trainer as t; print(t.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=first, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(first / "action_launch" / "training" / "trainer.py"), (
        proc.stderr
    )
    assert not (first / ".venv").exists() and not (first / "runs").exists()
    assert snapshot_code(REPO, tmp_path) == first


def _git(repo, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_a_snapshot_tags_its_runs_with_the_commit_dirty_flag_and_diff_it_was_taken_from(tmp_path):
    """A job runs a snapshot, which is no git tree (or sits in another checkout, whose HEAD moves on): the version
    is recorded at submission and read back by the job's run tags."""
    from action_launch.common.code_version import code_version

    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    (repo / "launch" / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "launch" / "a.py").write_text("x = 2\n")
    (repo / "new.txt").write_text("untracked\n")
    outer = tmp_path / "outer"  # a snapshot folder inside another checkout, as runs/.code is
    outer.mkdir()
    _git(outer, "init", "-q")
    version = code_version(snapshot_code(repo, outer / ".code"))
    assert (version.commit, version.dirty) == (commit, True)
    assert "-x = 1" in version.diff and "+x = 2" in version.diff and "+untracked" in version.diff
    _git(repo, "commit", "-q", "-am", "second")  # the same files on another commit: another copy, another version
    again = code_version(snapshot_code(repo, outer / ".code"))
    assert again.commit == _git(repo, "rev-parse", "HEAD").strip() != commit
    # the run tags of a job started in a snapshot of this checkout name this checkout's commit
    first = snapshot_code(REPO, tmp_path / "code")
    code = "import json; from action_launch.training.trainer import run_tags; print(json.dumps(run_tags(1)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=first, capture_output=True, text=True, timeout=120)
    tags = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tags["git.commit"] == _git(REPO, "rev-parse", "HEAD").strip() and tags["git.dirty"] in ("True", "False")


def test_folder_names_are_safe():
    assert safe_component("x; rm -rf ~") == "x_rm_-rf"
    assert safe_component("lr=0.1") == "lr=0.1"


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_local_executor_runs_the_same_job(video_set, tmp_path):
    from conftest import run_train, tiny_overrides

    proc = run_train(
        ["--local", *tiny_overrides(video_set, tmp_path, "local"), "train.epochs=1", "train.max_steps_per_epoch=2"],
        script="launch/submit.py",
    )
    assert "submitted job" in proc.stdout and "(local)" in proc.stdout and "finished" in proc.stdout, proc.stdout
    (folder,) = (tmp_path / "tests" / "local").iterdir()
    info = json.loads((folder / "job.json").read_text())
    assert info["cluster"] == "local" and info["world_size"] == 1
    assert (folder / "checkpoints").is_dir() and (folder / "config.yaml").is_file()
    assert info["code_snapshot"] and Path(info["code_snapshot"], "action_launch", "training", "trainer.py").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_the_tasks_of_a_local_array_are_told_apart_in_mlflow(video_set, tmp_path):
    """A 2-point grid through the local executor: one MLflow run per task named by its grid point, each in its own
    `<name>/<job id>` folder, whose confusion matrix is labelled with the data root's classes.txt."""
    from conftest import run_train, tiny_overrides
    from mlflow.tracking import MlflowClient

    run_train(
        [
            "--local",
            *tiny_overrides(video_set, tmp_path, "grid"),
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "optim.lr=0.002,0.001",
        ],
        script="launch/submit.py",
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["grid/optim.lr=0.001", "grid/optim.lr=0.002"]
    folders = sorted((tmp_path / "tests" / "grid").iterdir())
    assert len(folders) == 2
    for folder in folders:
        info = json.loads((folder / "job.json").read_text())
        assert info["run_name"] == f"grid/optim.lr={info['lr']}" and info["name"] == "grid"
        cm = json.loads((folder / "confusion_matrix.json").read_text())
        assert cm["classes"] == ["up", "down", "grow", "shrink"]


def _local_job(tmp_path: Path, fn):
    """`fn` submitted through submitit's local executor as submit.py submits a job: (job, its folder with job.json)."""
    executor = make_executor(tmp_path / "%j", "local", SlurmConfig(), name="status", nodes=1, tasks_per_node=1)
    job = executor.submit(fn)
    folder = tmp_path / str(job.job_id)
    write_job_json(folder, {"job_id": str(job.job_id), "cluster": "local", "nodes": 1, "tasks_per_node": 1})
    return job, folder


def _status(folder: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "launch/submit.py", "--status", str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_of_a_failed_local_job_shows_its_traceback_and_logs(tmp_path):
    job, folder = _local_job(tmp_path, functools.partial(int, "no-such-number"))
    assert isinstance(job.exception(), Exception)  # waits for the job to end
    (folder / "checkpoints" / "step_00000002").mkdir(parents=True)
    out = _status(folder)
    assert out.startswith(f"job {job.job_id} on local: 1 node(s) x 1 task(s)\nstate: FINISHED\n"), out
    assert "checkpoints: step_00000002" in out and "job failed:" in out
    assert (
        "Traceback (most recent call last)" in out and "invalid literal for int() with base 10: 'no-such-number'" in out
    )
    assert f"--- {job.job_id}_0_log.err (last " in out and f"--- {job.job_id}_0_log.out (last " in out


def test_status_of_a_finished_local_job_shows_its_result(tmp_path):
    job, folder = _local_job(tmp_path, functools.partial(sum, [1, 2]))
    assert job.result() == 3
    out = _status(folder)
    assert "result: 3" in out and "checkpoints: none" in out and "job failed" not in out


def test_status_of_a_running_job_answers_without_waiting(tmp_path):
    job, folder = _local_job(tmp_path, functools.partial(time.sleep, 120))
    try:
        start = time.time()
        out = _status(folder)
        assert time.time() - start < 10  # submitit's exception() would wait for the end (or 15 s for a result file)
        assert "result: none yet" in out and "job failed" not in out
    finally:
        job.cancel()


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_waiting_on_a_failed_job_prints_the_end_of_its_log(video_set, tmp_path):
    """A job that fails on its node (48 training clips cannot fill a micro batch of 64: past what submit.py
    checks): --wait (implied by the local executor) ends with the log's last lines, not only its path."""
    from conftest import run_train, tiny_overrides

    proc = run_train(
        ["--local", *tiny_overrides(video_set, tmp_path, "fails"), "train.micro_batch_size=64"],
        script="launch/submit.py",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = proc.stderr[proc.stderr.index("failed: ") :]
    assert report.startswith("failed: ValueError: 48 training clips cannot fill one optimizer step"), report
    assert "_0_log.err:" in report and "cannot fill one optimizer step" in report.split("details:")[0], report
    assert "details: python launch/submit.py --status" in report
