"""The one validator: closed choices are Literals of the names the code dispatches on, and a bad value of any
section a user writes (run config, sweep file, `test:`) fails up front with the dotted key, the closest valid
choice and where it came from."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import yaml
from conftest import REPO

from action_launch.config import ConfigError, load_config
from action_launch.sweeps.spec import SweepError, load_sweep


def choices(cls: type, name: str) -> set:
    return set(typing.get_args(typing.get_type_hints(cls)[name]))


def test_data_literals_are_the_names_the_data_code_dispatches_on():
    from action_launch.datasets import lists, protocols, sampling, skeleton, video
    from action_launch.datasets.config import ClipConfig, SkeletonStreamConfig
    from action_launch.models import graphs

    assert choices(video.VideoConfig, "list_format") == set(lists.FORMATS)
    assert choices(ClipConfig, "sampling") == set(video.SAMPLINGS)
    assert choices(ClipConfig, "short_video") == set(sampling.SHORT_VIDEO)
    assert choices(SkeletonStreamConfig, "skeleton_stream") == set(skeleton.STREAMS)
    assert choices(SkeletonStreamConfig, "graph") == set(graphs.list_graphs())
    assert choices(ClipConfig, "protocol") == set(protocols.PROTOCOLS)
    crops = {n for name in protocols.PROTOCOLS for n in protocols.protocol_class(name).crops}
    assert choices(ClipConfig, "test_num_crops") == crops


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.dataset=vidoe",
            "data.dataset: expected one of 'multiperson', 'rawframes', 'skeleton', 'video', "
            "got 'vidoe'; did you mean 'video'? (in command-line override)",
        ),
        (
            "data.sampling=dnese",
            "data.sampling: expected one of 'dense', 'segment', got 'dnese'; did you mean 'dense'?",
        ),
        (
            "data.skeleton_stream=bones",
            "data.skeleton_stream: expected one of 'joint', 'bone', got 'bones'; did you mean 'bone'?",
        ),
        ("data.test_num_crops=2", "data.test_num_crops: expected one of 1, 3, 5, 10, got 2 (in command-line override)"),
        (
            "data.protocol=slowfast",
            "data.protocol: expected one of 'native', 'pyslowfast', 'tsn', 'mmaction', got "
            "'slowfast'; did you mean 'pyslowfast'?",
        ),
    ],
)
def test_a_bad_choice_names_the_key_and_the_closest_choice(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_a_bad_choice_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  graph: ntu-rgbd\n")
    with pytest.raises(ConfigError, match=rf"data.graph: .*got 'ntu-rgbd'; did you mean 'ntu-rgb\+d'\? \(in {path}\)"):
        load_config(path)


@pytest.mark.parametrize(
    "override, closest",
    [("data.dataset=vidoe", "video"), ("data.sampling=dnese", "dense"), ("data.skeleton_stream=bones", "bone")],
)
def test_train_and_submit_fail_with_one_line_before_anything_starts(tmp_path, override, closest):
    expected = f"config error: {override.split('=')[0]}: "
    train = subprocess.run(
        [sys.executable, "launch/train.py", "--print-config", override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert train.returncode == 2 and train.stdout == ""
    [line] = train.stderr.strip().splitlines()
    assert line.startswith(expected) and line.endswith(f"did you mean {closest!r}? (in command-line override)")
    submit = subprocess.run(
        [sys.executable, "launch/submit.py", "--dry-run", "--local", f"output_dir={tmp_path}", override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 2 and submit.stdout == ""
    assert submit.stderr.strip().splitlines() == [line]
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------- sweep file
SPACE = {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


@pytest.mark.parametrize(
    "section, message",
    [
        ({"asha": {"grace": 5}}, "unknown key asha.grace; did you mean asha.grace_period?"),
        (
            {"pbt": {"perturbation_intervall": 2}},
            "unknown key pbt.perturbation_intervall; did you mean pbt.perturbation_interval?",
        ),
        ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor: expected a value > 1, got 1.0"),
        ({"pbt": {"quantile_fraction": 0.8}}, "pbt.quantile_fraction: expected a value in [0, 0.5], got 0.8"),
        ({"budget": "epoch"}, "budget: expected one of 'epochs', 'steps', got 'epoch'; did you mean 'epochs'?"),
        ({"spaec": {}}, "unknown key spaec; did you mean space?"),
    ],
)
def test_sweep_file_sections_fail_with_the_dotted_key_and_the_file(tmp_path, section, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"space": SPACE, **section}))
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert str(err.value) == f"{message} (in {path})"


@pytest.mark.parametrize(
    "section, message",
    [
        ({"asha": {"grace": 5}}, "unknown key asha.grace; did you mean asha.grace_period?"),
        (
            {"pbt": {"perturbation_intervall": 2}},
            "unknown key pbt.perturbation_intervall; did you mean pbt.perturbation_interval?",
        ),
    ],
)
def test_tune_dry_run_fails_on_a_bad_sweep_section(tmp_path, section, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"space": SPACE, **section}))
    proc = subprocess.run(
        [sys.executable, "launch/tune.py", "--dry-run", "--sweep", str(path), f"output_dir={tmp_path / 'runs'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {message} (in {path})"]
    assert not (tmp_path / "runs").exists()


def test_sweep_sections_read_like_the_mappings_the_scheduler_code_reads(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"space": SPACE, "asha": {"grace_period": 2}, "pbt": {"synch": True}}))
    spec = load_sweep(path)
    assert dict(spec.asha) == {"grace_period": 2, "reduction_factor": 3.0}  # max_t unset: not a key
    assert "max_t" not in spec.asha and spec.pbt.get("synch") is True and spec.pbt["perturbation_interval"] == 2
    assert [p.name for p in spec.pbt_mutations()] == ["optim.lr"]


# ------------------------------------------------------------------------------------- test section
def test_test_section_is_checked_by_the_same_validator(tmp_path):
    from action_launch.evaluation.evaluate import load_eval_config

    path = tmp_path / "c.yaml"
    path.write_text("test:\n  aggregate: mean_sofmax\n")
    with pytest.raises(
        ConfigError,
        match=rf"test.aggregate: expected one of 'mean_softmax', 'sum', 'mean', got "
        rf"'mean_sofmax'; did you mean 'mean_softmax'\? \(in {path}\)",
    ):
        load_eval_config(path)
    with pytest.raises(
        ConfigError,
        match=r"test.split: expected one of 'test', 'val', got 'tset'; did you mean "
        r"'test'\? \(in command-line override\)",
    ):
        load_eval_config(None, ["test.split=tset"])
    with pytest.raises(ConfigError, match=r"test.batch_size: expected a value >= 0, got -1"):
        load_eval_config(None, ["test.batch_size=-1"])
    with pytest.raises(ConfigError, match=r"test: expected EvalConfig, got 'sum'"):
        load_eval_config(None, ["test=sum"])
