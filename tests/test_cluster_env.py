"""One cluster environment: Slurm's node list, ranks and the main address and port every task derives alike, read in
one place (`common.cluster_env`) by torch's process group, submitit's jobs, a sweep job's Ray head and
`slurm/train.sbatch`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

from action_launch.common.cluster_env import PORT_BASE, PORT_SPAN, ClusterEnvironment, expand_nodelist, job_port


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a,b", ["a", "b"]),
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[8-10],cpu[009-010],login", ["gpu8", "gpu9", "gpu10", "cpu009", "cpu010", "login"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ],
)
def test_node_lists_expand_in_slurms_order(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    env = ClusterEnvironment.from_slurm({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": nodelist})
    assert env.main_host == hosts[0] and env.num_nodes == len(hosts)


@pytest.mark.parametrize("nodelist", ["", "n[a-3]", "n[1-x]"])
def test_an_unreadable_node_list_is_named(nodelist):
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST="):
        expand_nodelist(nodelist)


def test_the_port_follows_from_the_job_id_within_its_range():
    ports = {job_id: job_port(job_id) for job_id in ("0", "1", "19999", "20000", "123456", "987654321", "55_3")}
    assert all(PORT_BASE <= port < PORT_BASE + PORT_SPAN for port in ports.values())
    assert ports["123456"] == 23456 and ports["20000"] == ports["0"] == PORT_BASE and ports["55_3"] == job_port("553")
    assert job_port("123457") == job_port("123456") + 1  # consecutive jobs on one node get different ports
    with pytest.raises(ValueError, match="no digits"):
        job_port("abc")


def test_ranks_come_from_slurms_variables():
    env = ClusterEnvironment.from_slurm(
        {
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "n[3-4]",
            "SLURM_PROCID": "3",
            "SLURM_NTASKS": "4",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.node_rank, env.main_port) == (3, 4, 1, 1, 24242)
    assert env.torch_variables("n3") == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "n3",
        "MASTER_PORT": "24242",
    }
    assert ClusterEnvironment.from_slurm({}) is None  # not in a Slurm job


# The four places, each run as it runs in a job: a bare `srun` task (training.distributed.resolve_env), a submitit
# task (cluster.jobs.export_distributed_env with submitit's own JobEnvironment), a sweep job's Ray head
# (cluster.sweep_job.ray_addresses) and the batch script's own lines.
FOUR_PLACES = """
import json, os, submitit
from action_launch.cluster.jobs import export_distributed_env
from action_launch.cluster.sweep_job import ray_addresses
from action_launch.training.distributed import resolve_env

out = {}
dist_env = resolve_env()
out["distributed"] = [dist_env.master_addr, dist_env.master_port]
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    del os.environ[key]
job_env = submitit.JobEnvironment()
export_distributed_env(job_env)
out["jobs"] = [os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])]
head, _, port = ray_addresses(job_env)
out["sweep_job"] = [head, port]
print(json.dumps(out))
"""


def _sbatch_master(env: dict) -> list:
    """MASTER_ADDR and MASTER_PORT as the lines of slurm/train.sbatch that set them leave them."""
    script = (REPO / "slurm" / "train.sbatch").read_text()
    lines = [line for line in script.splitlines() if re.match(r"\s*(master=|eval \"\$master\"|export MASTER_)", line)]
    assert lines, "slurm/train.sbatch sets no MASTER_ADDR/MASTER_PORT"
    shell = "set -euo pipefail\n" + "\n".join(lines) + '\necho "$MASTER_ADDR $MASTER_PORT"'
    done = subprocess.run(
        ["bash", "-c", shell],
        env={**env, "PYTHON": sys.executable},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    addr, port = done.stdout.split()
    return [addr, int(port)]


@pytest.mark.parametrize("job_id,nodelist", [("123456", "node[01-03,07]"), ("7", "a,b"), ("987654321", "solo")])
def test_the_four_places_agree_on_the_main_address_and_port(job_id, nodelist):
    torch_names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in torch_names}
    env.update(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NODELIST=nodelist,
        SLURM_PROCID="1",
        SLURM_NTASKS="2",
        SLURM_LOCALID="0",
        SLURM_NODEID="1",
        SLURM_JOB_NUM_NODES=str(len(expand_nodelist(nodelist))),
        SUBMITIT_EXECUTOR="slurm",
        SUBMITIT_FOLDER=str(REPO),
    )
    expected = ClusterEnvironment.from_slurm(env)
    assert expected is not None
    want = [expected.main_address(), expected.main_port]  # no scontrol here: the first host itself
    assert want == [expand_nodelist(nodelist)[0], PORT_BASE + int(job_id) % PORT_SPAN]
    done = subprocess.run([sys.executable, "-c", FOUR_PLACES], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"distributed": want, "jobs": want, "sweep_job": want}
    assert _sbatch_master(env) == want
