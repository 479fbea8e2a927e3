"""`launch/submit.py` against a real Slurm 22.05 cluster that `slurm/testcluster/cluster.sh` brings up here.

Needs root and the Debian packages slurm-wlm, slurm-client, slurmdbd, munge, mariadb-server, iproute2 (the
script installs them with apt-get when missing). When the cluster cannot come up these tests FAIL with the
reason; they are never skipped. Select or deselect them with `-m slurm` / `-m "not slurm"`.

The cluster runs in a network namespace that the script creates (Slurm's daemons listen on every interface
of theirs, and there they have only loopback and a private address). While this module runs, the test
process itself is moved into that namespace (setns on its main thread), so submitit, sbatch/sacct/scancel
and every job talk to the cluster on 127.0.0.1 exactly as on a real login node; it moves back before the
cluster is torn down, and the other test modules never see the namespace.

The jobs are submitted together at the start of the module (they share the two nodes, like real
users' jobs) and each test then waits for the one it checks. Timeouts are generous: on a fresh
machine the first 2-rank job also compiles DeepSpeed's shm_comm op (about a minute).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import REPO, final_weights, tiny_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ready")]

CLUSTER = REPO / "slurm" / "testcluster" / "cluster.sh"
# A cluster of its own (folder and ports), so a developer's cluster on the default ones is left alone.
CLUSTER_ENV = {
    "SLURM_TESTCLUSTER_DIR": "/tmp/action-launch-slurm-tests",
    "SLURM_TESTCLUSTER_PORT": "17200",
    "SLURM_TESTCLUSTER_NETNS": "action-launch-slurm-tests",
}
NETNS_PATH = f"/run/netns/{CLUSTER_ENV['SLURM_TESTCLUSTER_NETNS']}"
CLONE_NEWNET = 0x40000000
HOME_NETNS: Dict[str, int] = {}  # "fd": this process's own network namespace while it visits the cluster's
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
SHELL_NAME = "x; rm -rf ~"


def set_netns(fd: int) -> None:
    """Move the calling thread (the main one: its children and later threads follow) into a network namespace."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into a network namespace: {os.strerror(err)}")


@pytest.fixture(scope="module")
def slurm_cluster():
    """Bring the test cluster up (installing packages if needed) and move this process into its network
    namespace; move back and tear the cluster down after the module."""
    env = {**os.environ, **CLUSTER_ENV}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(
            f"the Slurm test cluster did not come up (needs root and apt-get, or the packages slurm-wlm "
            f"slurm-client slurmdbd munge mariadb-server iproute2):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    print(f"test cluster up in {time.monotonic() - start:.1f}s")
    home = HOME_NETNS["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # to come back to
    cluster = os.open(NETNS_PATH, os.O_RDONLY)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{CLUSTER_ENV['SLURM_TESTCLUSTER_DIR']}/etc/slurm.conf"
    try:
        set_netns(cluster)
        yield os.environ["SLURM_CONF"]
    finally:
        set_netns(home)
        os.close(HOME_NETNS.pop("fd"))
        os.close(cluster)
        subprocess.run(["bash", str(CLUSTER), "purge"], env=env, capture_output=True, text=True, timeout=300)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def submit_env(extra: Dict[str, str] | None = None) -> Dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def start_submit(args: List[str], env: Dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "launch/submit.py", *args],
        cwd=REPO,
        env=submit_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_submit(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"submit.py failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return out


def job_ids(submit_output: str) -> List[str]:
    return [line.split()[2] for line in submit_output.splitlines() if line.startswith("submitted job ")]


def sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True
    ).stdout
    states = [line.split("|")[1] for line in out.splitlines() if line.split("|")[0] == job_id]
    return states[0].split()[0] if states else "UNKNOWN"


def wait_job(job_id: str, folder: Path, timeout: float = 480) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in TERMINAL:
            return state
        time.sleep(1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*_log.*")))
    pytest.fail(f"job {job_id} still {sacct_state(job_id)} after {timeout}s\n{logs}", pytrace=False)


def mlflow_run(output_dir: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run {name!r}, got {len(runs)}"
    return runs[0]


@pytest.fixture(scope="module")
def jobs(slurm_cluster, video_set, tmp_path_factory):
    """Submit every job of this module at once; each test waits for its own."""
    root = tmp_path_factory.mktemp("slurm_jobs")
    home = root / "home"  # a HOME that `rm -rf ~` would empty, were the job name ever run by a shell
    (home / "canary").mkdir(parents=True)
    (home / "canary" / "alive").write_text("still here\n")
    common = ["--time", "00:15:00", "deterministic=true", "train.epochs=3"]  # after tiny_overrides: these win
    procs = {
        # uninterrupted 2-node reference, and the same run that gets preempted
        "ref": start_submit(["--nodes", "2", *tiny_overrides(video_set, root / "ref", "ref"), *common]),
        "pre": start_submit(["--nodes", "2", *tiny_overrides(video_set, root / "pre", "pre"), *common]),
        # a grid of 3 names (one with shell metacharacters) as one job array
        "array": start_submit(
            [
                "--time",
                "00:15:00",
                *tiny_overrides(video_set, root / "array", "unused"),
                f"name=a,b,{SHELL_NAME}",
                "train.epochs=1",
                "train.max_steps_per_epoch=1",
                "tracking.enabled=false",
            ],
            env={"HOME": str(home)},
        ),
        # a job that fails when it starts, past what submit.py checks (a missing data.root is refused before
        # submitting): 48 training clips cannot fill a micro batch of 64
        "fail": start_submit(
            ["--time", "00:15:00", *tiny_overrides(video_set, root / "fail", "fail"), "train.micro_batch_size=64"]
        ),
    }
    out = {key: finish_submit(proc) for key, proc in procs.items()}
    ids = {key: job_ids(text) for key, text in out.items()}
    # the same 2-node run through slurm/train.sbatch (plain sbatch + srun, no submitit), preempted below
    (root / "sbatch").mkdir()
    proc = subprocess.run(
        [
            "sbatch",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--time=00:15:00",
            f"--output={root / 'sbatch'}/slurm-%j.out",
            "slurm/train.sbatch",
            *tiny_overrides(video_set, root / "sbatch", "sbatch"),
            *common[2:],
        ],
        cwd=REPO,
        env={**submit_env(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ids["sbatch"] = [proc.stdout.split()[-1]]
    jobs = {"root": root, "home": home, "out": out, "ids": ids}
    # Preempt both "pre" jobs once they train (in the background: the tests run one after the other)
    preempted = {
        "pre": (root / "pre" / "tests" / "pre" / ids["pre"][0], f"{ids['pre'][0]}_0_log.out"),
        "sbatch": (root / "sbatch", f"slurm-{ids['sbatch'][0]}.out"),
    }
    jobs["preempt"] = {}
    for key, (folder, log) in preempted.items():
        result: Dict[str, str] = {}
        thread = threading.Thread(target=preempt_when_training, args=(ids[key][0], folder, log, result), daemon=True)
        thread.start()
        jobs["preempt"][key] = (thread, result)
    return jobs


def preempt_when_training(job_id: str, folder: Path, log: str, result: Dict[str, str], timeout: float = 480) -> None:
    """Send the preemption signal (USR1) once the job logged optimizer step 2 of its first epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / log
        if path.is_file() and "epoch 1/3 step 2/3" in path.read_text(errors="replace"):
            proc = subprocess.run(["scancel", "--signal=USR1", job_id], capture_output=True, text=True)
            result["sent"] = "yes" if proc.returncode == 0 else f"scancel failed: {proc.stderr}"
            return
        time.sleep(0.2)
    result["sent"] = f"job {job_id} never logged step 2 within {timeout}s"


def preempted(jobs, key: str) -> None:
    thread, result = jobs["preempt"][key]
    thread.join(timeout=500)
    assert result.get("sent") == "yes", result


def job_folder(jobs, key: str, name: str, index: int = 0) -> Path:
    job_id = jobs["ids"][key][index]
    return jobs["root"] / key / "tests" / name / job_id


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(jobs):
    (job_id,) = jobs["ids"]["pre"]
    folder = job_folder(jobs, "pre", "pre")
    preempted(jobs, "pre")
    assert wait_job(job_id, folder) == "COMPLETED"
    log = (folder / f"{job_id}_0_log.out").read_text()
    assert "stopped by SIGUSR1" in log and f"requeueing job {job_id} (1/3)" in log, log[-3000:]
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and "optimizer step 0" not in resumed[0], log[-3000:]
    info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in info
    run = mlflow_run(jobs["root"] / "pre", "pre")  # one MLflow run across the requeue
    assert run.info.status == "FINISHED" and run.data.tags["slurm.requeue_count"] == "1"
    ref_id = jobs["ids"]["ref"][0]
    ref_folder = job_folder(jobs, "ref", "ref")
    assert wait_job(ref_id, ref_folder) == "COMPLETED"
    expected, got = final_weights(ref_folder), final_weights(folder)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_train_sbatch_without_submitit_requeues_and_resumes(jobs):
    (job_id,) = jobs["ids"]["sbatch"]
    logs = jobs["root"] / "sbatch"
    preempted(jobs, "sbatch")
    assert wait_job(job_id, logs) == "COMPLETED"
    log = (logs / f"slurm-{job_id}.out").read_text()
    assert "2 node(s), 2 task(s)" in log and f"requeueing job {job_id} (1/3)" in log, log[-3000:]
    assert f"job {job_id} (restart 1)" in log and log.count("resumed from") == 1, log[-3000:]
    ref_folder = job_folder(jobs, "ref", "ref")
    assert wait_job(jobs["ids"]["ref"][0], ref_folder) == "COMPLETED"
    expected, got = final_weights(ref_folder), final_weights(logs / "tests" / "sbatch")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_two_nodes_train_with_world_size_two_and_the_scaled_lr(jobs):
    (job_id,) = jobs["ids"]["ref"]
    folder = job_folder(jobs, "ref", "ref")
    assert "2 node(s) x 1 task(s) = world size 2" in jobs["out"]["ref"]
    assert "lr 0.002 -> 0.004 (linear rule, base batch 8)" in jobs["out"]["ref"]
    assert wait_job(job_id, folder) == "COMPLETED"
    nodes = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "NodeList"], capture_output=True, text=True
    ).stdout.strip()
    assert nodes == "n[1-2]"
    run = mlflow_run(jobs["root"] / "ref", "ref")
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert float(run.data.params["optim.scaled_lr"]) == pytest.approx(0.004)  # 0.002 x (8 x 1 x 2) / 8
    assert run.data.params["optim.effective_batch_size"] == "16"
    assert run.data.tags["slurm.requeue_count"] == "0" and run.data.tags["slurm.job_id"] == job_id
    info = json.loads((folder / "job.json").read_text())
    assert info["nodes"] == 2 and info["world_size"] == 2 and info["job_id"] == job_id
    assert (folder / "config.yaml").is_file() and (folder / f"{job_id}_1_log.out").is_file()


def test_grid_is_one_job_array_and_shell_metacharacters_stay_data(jobs):
    ids = jobs["ids"]["array"]
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one sbatch call: <array id>_<task>
    names = []
    for i, job_id in enumerate(ids):
        folder = job_folder(jobs, "array", "a", i)  # an array shares the first config's folder
        assert wait_job(job_id, folder) == "COMPLETED", (folder / f"{job_id}_0_log.err").read_text()[-3000:]
        events = [json.loads(line) for line in (folder / "tracking" / "journal.jsonl").read_text().splitlines()]
        names.append(next(e["values"]["name"] for e in events if e["kind"] == "params"))
        # the run is tagged with the id submit.py printed (<array id>_<task>), not the task's own SLURM_JOB_ID
        tagged = [e["values"]["slurm.job_id"] for e in events if e["kind"] == "tags" and "slurm.job_id" in e["values"]]
        assert tagged and set(tagged) == {job_id}, tagged
    assert names == ["a", "b", SHELL_NAME]
    assert (jobs["home"] / "canary" / "alive").read_text() == "still here\n"


def listening_ports(netns_fd: int | None = None) -> set:
    """TCP ports listening in this thread's network namespace, or in the one `netns_fd` refers to."""
    cmd = ["ss", "-Hltn"] if netns_fd is None else ["nsenter", f"--net=/proc/self/fd/{netns_fd}", "ss", "-Hltn"]
    out = subprocess.run(
        cmd, pass_fds=() if netns_fd is None else (netns_fd,), capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def test_cluster_listens_only_inside_its_namespace(slurm_cluster):
    first = int(CLUSTER_ENV["SLURM_TESTCLUSTER_PORT"])
    ports = set(range(first, first + 5))  # slurmctld, slurmdbd, MariaDB, slurmd n1, slurmd n2
    assert ports <= listening_ports()
    assert not ports & listening_ports(HOME_NETNS["fd"])  # the namespace the tests started in


@pytest.mark.parametrize(
    "args, says",
    [
        (["--partition", "nosuch"], "invalid partition specified: nosuch"),
        (["--nodes", "3"], "node configuration is not available"),
    ],
)
def test_a_job_slurm_would_refuse_is_refused_before_anything_is_written(slurm_cluster, video_set, tmp_path, args, says):
    """What `sbatch --test-only` refuses (a partition that does not exist; more nodes than the partition has,
    which would pend forever) is one line and exit 2, with no job folder, code snapshot or job left behind."""
    proc = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            "--time",
            "00:05:00",
            *args,
            *tiny_overrides(video_set, tmp_path / "out", "refused"),
        ],
        cwd=REPO,
        env=submit_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("error: Slurm would refuse this job: ") and says in line, line
    assert not (tmp_path / "out").exists() and "submitted job" not in proc.stdout


def test_dry_run_script_passes_sbatch_test_only(slurm_cluster, video_set, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            "--dry-run",
            "--nodes",
            "2",
            "--time",
            "00:05:00",
            *tiny_overrides(video_set, tmp_path, SHELL_NAME),
            "optim.lr=0.001,0.002",
        ],
        cwd=REPO,
        env=submit_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.split("# ---- sbatch script")[1].split("\n", 1)[1].split("\n# ---- resolved config")[0]
    assert "#SBATCH --nodes=2" in script and "#SBATCH --array=0-1%2" in script and "rm -rf" not in script
    assert f"name: {SHELL_NAME}" in proc.stdout or f"name: '{SHELL_NAME}'" in proc.stdout
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    test = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "to start at" in test.stderr, test.stderr
    assert not list(tmp_path.rglob("*_submitted.pkl"))  # nothing was submitted


def test_failing_job_shows_its_traceback_in_status(jobs):
    (job_id,) = jobs["ids"]["fail"]
    folder = job_folder(jobs, "fail", "fail")
    assert wait_job(job_id, folder) == "FAILED"
    proc = subprocess.run(
        [sys.executable, "launch/submit.py", "--status", str(folder)],
        cwd=REPO,
        env=submit_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"job {job_id} on slurm" in proc.stdout and "FAILED" in proc.stdout
    assert "Traceback (most recent call last)" in proc.stdout and "cannot fill one optimizer step" in proc.stdout, (
        proc.stdout
    )


def test_sweep_as_one_slurm_job_runs_trials_on_both_nodes(slurm_cluster, video_set, tmp_path):
    """`tune.py --slurm --nodes 2`: one job, a Ray head on the first node and a worker on the second; the
    trials (1 CPU each, 1 CPU per node) are spread over both, and MLflow gets the parent and its children."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("metric: val/loss\nmode: min\nspace:\n  data.num_frames: {grid: [2, 3, 4, 6]}\n")
    overrides = [
        o
        for o in tiny_overrides(video_set, tmp_path / "runs", "unused")
        if not o.startswith(("data.num_workers", "train.epochs"))
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "launch/tune.py",
            "--config",
            "configs/timesformer/tiny.yaml",
            "--sweep",
            str(sweep),
            "--name",
            "sl",
            "--scheduler",
            "fifo",
            "--slurm",
            "--nodes",
            "2",
            "--wait",
            "--time",
            "00:15:00",
            *overrides,
            "data.num_workers=0",
            "train.epochs=1",
        ],
        cwd=REPO,
        env=submit_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    sweep_dir = tmp_path / "runs" / "tests" / "sl"
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(sweep_dir.glob("slurm/*/*_log.*")))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    assert "submitted sweep job" in proc.stdout
    rows = (sweep_dir / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(r.endswith(",completed") for r in rows), rows
    nodes = {p.read_text().strip() for p in sweep_dir.glob("*/ray_node.txt")}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} Ray node(s)"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 4
    # Issue 15: Ray stops in seconds on both nodes (workers first, each `ray start` signalled alone), not after
    # its 30 s drain timeout
    stopped = re.findall(r"ray on node (\d) stopped in ([\d.]+) s", logs)
    assert sorted(n for n, _ in stopped) == ["0", "1"] and all(float(s) < 10 for _, s in stopped), stopped


def test_cancelled_sweep_job_resumes_and_leaves_no_run_running(slurm_cluster, video_set, tmp_path):
    """Issue 15 on Slurm: a sweep job `scancel`led once a trial has finished, then `tune.py --slurm --resume`:
    the trials finished before the cancel are not trained again and their runs end FINISHED (they named the
    cancelled job's mlflow server), and no resumed trial gets a changed.tracking.uri tag."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("metric: val/loss\nmode: min\nspace:\n  data.num_frames: {grid: [2, 3, 4, 6]}\n")
    overrides = [
        o
        for o in tiny_overrides(video_set, tmp_path / "runs", "unused")
        if not o.startswith(("data.num_workers", "train.epochs"))
    ]
    cmd = [
        sys.executable,
        "launch/tune.py",
        "--config",
        "configs/timesformer/tiny.yaml",
        "--sweep",
        str(sweep),
        "--name",
        "cancel",
        "--scheduler",
        "fifo",
        "--slurm",
        "--nodes",
        "2",
        "--time",
        "00:15:00",
        *overrides,
        "data.num_workers=0",
        "train.epochs=2",
    ]
    first = subprocess.run(cmd, cwd=REPO, env=submit_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (job_id,) = [
        line.split()[3].rstrip(";") for line in first.stdout.splitlines() if line.startswith("submitted sweep job")
    ]
    sweep_dir = tmp_path / "runs" / "tests" / "cancel"

    def finished_trials() -> List[str]:
        return sorted(
            {
                m.parents[2].name
                for m in sweep_dir.glob("*/checkpoints/step_*/meta.json")
                if json.loads(m.read_text())["epoch"] == 2
            }
        )

    deadline = time.monotonic() + 600
    while not finished_trials() and time.monotonic() < deadline and sacct_state(job_id) not in TERMINAL:
        time.sleep(1)
    time.sleep(3)  # the trial's end reaches Tune and MLflow
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    assert wait_job(job_id, sweep_dir / "slurm" / job_id, timeout=180) == "CANCELLED"
    finished = finished_trials()
    assert 1 <= len(finished) < 4, finished
    # Issue 22, item 3: scancel stops the sweep as Ctrl-C does (the parent run KILLED, not FAILED), and no task
    # ignores the SIGTERM until Slurm kills it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(sweep_dir.glob("slurm/*/ray_stopped_node*"))) < 1:
        time.sleep(0.5)
    cancel_logs = "\n".join(p.read_text() for p in sorted(sweep_dir.glob("slurm/*/*_log.*")))
    assert "Bypassing signal SIGTERM" not in cancel_logs, cancel_logs[-3000:]
    ends = [
        json.loads(line)
        for line in (sweep_dir / "tracking" / "journal.jsonl").read_text().splitlines()
        if '"kind": "end"' in line
    ]
    assert ends and ends[-1]["status"] == "KILLED", ends
    before = {t: (sweep_dir / t / "train.log").read_text() for t in finished}

    resumed = subprocess.run(
        cmd + ["--resume", "--wait"], cwd=REPO, env=submit_env(), capture_output=True, text=True, timeout=900
    )
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(sweep_dir.glob("slurm/*/*_log.*")))
    assert resumed.returncode == 0, f"{resumed.stdout[-3000:]}\n{resumed.stderr[-3000:]}\n{logs}"
    rows = (sweep_dir / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(r.endswith(",completed") for r in rows), rows
    for trial in finished:  # not trained again
        after = (sweep_dir / trial / "train.log").read_text()[len(before[trial]) :]
        assert not re.search(r"epoch \d+/\d+ step", after), after[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}, {r.info.run_name: r.info.status for r in runs}
    assert len([r for r in runs if r.data.tags.get("sweep.role") == "parent"]) == 1
    assert not [r.info.run_name for r in runs if "changed.tracking.uri" in r.data.tags]
