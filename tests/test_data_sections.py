"""The `data:` section is the keys every dataset kind reads plus the chosen kind's own: a run records those and no
other kind's, the validator refuses another kind's key by naming its kind, suggests keys of the kind only, and the
config.yaml of a run from before (every kind's keys) still loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml
from conftest import REPO, run_train, tiny_overrides

from action_launch.config import ConfigError, load_config, to_dict
from action_launch.datasets import dataset_class, kinds
from action_launch.datasets.config import DataConfig
from action_launch.datasets.multiperson import MultiPersonConfig
from action_launch.datasets.rawframes import RawFramesConfig
from action_launch.datasets.skeleton import SkeletonConfig
from action_launch.datasets.video import VideoConfig

SKELETON_ONLY = {
    "train_data",
    "val_data",
    "test_data",
    "skeleton_stream",
    "graph",
    "window_size",
    "crop_range",
    "random_rotation",
    "laban",
    "laban_formula",
    "targets_csv",
    "participant_column",
    "target_columns",
    "participant_regex",
}
CLIP_ONLY = {
    "list_format",
    "separator",
    "path_prefix",
    "protocol",
    "num_frames",
    "sampling_rate",
    "crop_size",
    "mean",
    "std",
    "test_num_crops",
    "frame_template",
    "frame_start_index",
    "check_files",
}

# The data section of a run's config.yaml as written before each kind had its own keys: all 50 of them, each at its
# default; a test sets its run's own values over it.
OLD_DATA = """
dataset: video
root: data/synthetic
train_list: train.txt
val_list: val.txt
test_list: null
list_format: video
separator: ' '
path_prefix: ''
protocol: native
num_frames: 8
sampling_rate: 32
target_fps: 30.0
sampling: dense
short_video: loop
train_short_side: [256, 320]
scale_sampling: uniform
test_short_side: 224
crop_size: 224
test_crop_size: null
flip: true
multi_scale_crop: false
color_jitter: false
channel_order: rgb
mean: [0.45, 0.45, 0.45]
std: [0.225, 0.225, 0.225]
num_workers: 2
pin_memory: true
prefetch_factor: 2
persistent_workers: true
max_bad_fraction: 0.01
bad_files_log: null
check_files: auto
test_num_clips: 1
test_num_crops: 1
frame_template: img_{:05d}.jpg
frame_start_index: 1
train_data: train_data.npy
val_data: val_data.npy
test_data: null
skeleton_stream: joint
graph: ntu-rgb+d
window_size: 0
crop_range: [0.5, 1.0]
random_rotation: 0.0
laban: false
laban_formula: described
targets_csv: null
participant_column: participant
target_columns: [openness, conscientiousness, extraversion, agreeableness, neuroticism]
participant_regex: ^([^_]+)
"""


def keys(cls: type) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def write_old_config(path, **data):
    section = {**yaml.safe_load(OLD_DATA), **data}
    path.write_text(
        yaml.safe_dump(
            {"experiment": "tiny", "name": "old", "model": {"name": "timesformer_tiny"}, "data": section},
            sort_keys=False,
        )
    )
    return path


def test_each_kind_has_its_section_class_and_its_dataset_reads_it():
    assert set(kinds()) == {"video", "rawframes", "skeleton", "multiperson"}
    for kind, cls in DataConfig.kinds().items():
        section = DataConfig(dataset=kind)  # a flat section makes its kind's class, as the YAML does
        assert type(section) is cls and issubclass(cls, DataConfig)
        assert typing.get_type_hints(dataset_class(kind).__init__)["cfg"] is cls
    assert not keys(SkeletonConfig) & CLIP_ONLY and not keys(VideoConfig) & SKELETON_ONLY
    with pytest.raises(TypeError, match="window_size"):
        DataConfig(dataset="video", window_size=16)


def test_the_run_records_only_its_kind_s_keys():
    video = to_dict(load_config(None))["data"]
    assert set(video) == keys(VideoConfig) and not set(video) & SKELETON_ONLY
    skeleton = to_dict(load_config(REPO / "configs/msg3d/tiny.yaml"))["data"]
    assert set(skeleton) == keys(SkeletonConfig) and not set(skeleton) & CLIP_ONLY
    command = [sys.executable, "launch/train.py", "--print-config", "--config", "configs/msg3d/tiny.yaml"]
    printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert yaml.safe_load(printed.stdout)["data"] == skeleton


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_a_video_run_logs_no_skeleton_keys_to_mlflow(video_set, tmp_path):
    from mlflow.tracking import MlflowClient

    run_train([*tiny_overrides(video_set, tmp_path, "sections"), "train.epochs=1", "train.max_steps_per_epoch=1"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    logged = {key.split(".", 1)[1] for key in run.data.params if key.startswith("data.")}
    assert logged == keys(VideoConfig) and not logged & SKELETON_ONLY
    saved = yaml.safe_load((tmp_path / "tests" / "sections" / "config.yaml").read_text())["data"]
    assert set(saved) == keys(VideoConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.window_size=16"],
            "data.window_size is a key of data.dataset=skeleton or multiperson, not of "
            "data.dataset=video; remove it, or set data.dataset=skeleton (in command-line override)",
        ),
        (
            ["data.dataset=skeleton", "data.crop_size=112"],
            "data.crop_size is a key of data.dataset=video, rawframes or multiperson, not of data.dataset=skeleton; "
            "remove it, or set data.dataset=video (in command-line override)",
        ),
        (
            ["data.frame_template={:06d}.png"],
            "data.frame_template is a key of data.dataset=rawframes, not of "
            "data.dataset=video; remove it, or set data.dataset=rawframes",
        ),
    ],
)
def test_a_key_of_another_kind_fails_naming_its_kind(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_another_kind_s_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: skeleton\n  num_frames: 16\n")
    with pytest.raises(
        ConfigError,
        match=rf"^data.num_frames is a key of data.dataset=video, rawframes or "
        rf"multiperson, not of data.dataset=skeleton; .* \(in {path}\)$",
    ):
        load_config(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.test_dat=x.npy"], "unknown key data.test_dat; did you mean data.test_list?"),
        (["data.dataset=skeleton", "data.crop_sise=0.5"], "unknown key data.crop_sise; did you mean data.crop_range?"),
        (
            ["data.dataset=skeleton", "data.windw_size=16"],
            "unknown key data.windw_size; did you mean data.window_size?",
        ),
    ],
)
def test_a_typo_is_matched_against_the_kind_s_own_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == f"{message} (in command-line override)"


def test_frame_folders_record_no_decoder(tmp_path):
    """Frame folders are read with Pillow: a rawframes run neither records `data.decoder` nor takes one; the
    config.yaml of a rawframes run from before, with the decoder at its default, still loads."""
    assert "decoder" not in keys(RawFramesConfig) and "decoder" in keys(VideoConfig) & keys(MultiPersonConfig)
    cfg = load_config(None, ["data.dataset=rawframes"])
    assert "decoder" not in to_dict(cfg)["data"]
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.dataset=rawframes", "data.decoder=torchcodec"])
    assert str(err.value).startswith(
        "data.decoder is a key of data.dataset=video or multiperson, not of data.dataset=rawframes; remove it"
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**to_dict(cfg), "data": {**to_dict(cfg)["data"], "decoder": "decord"}}))
    assert load_config(path).data == cfg.data


def test_an_old_config_yaml_with_every_kind_s_keys_loads(tmp_path):
    from action_launch.training.run_config import config_changes, saved_config

    path = write_old_config(
        tmp_path / "config.yaml",
        num_frames=4,
        sampling_rate=6,
        train_short_side=[32, 36],
        test_short_side=32,
        crop_size=32,
        bad_files_log="runs/tiny/old/bad_files.tsv",
    )
    cfg = load_config(path)
    assert type(cfg.data) is VideoConfig and (cfg.data.num_frames, cfg.data.crop_size) == (4, 32)
    assert set(to_dict(cfg)["data"]) == keys(VideoConfig)
    assert config_changes(saved_config(tmp_path), cfg) == {}  # a resume or test.py compares it with the file
    assert config_changes(saved_config(tmp_path), load_config(path, ["data.crop_size=48"])) == {
        "data.crop_size": (32, 48)
    }


def test_an_old_config_yaml_of_skeletons_loads_as_the_skeleton_kind(tmp_path):
    path = write_old_config(
        tmp_path / "config.yaml",
        dataset="skeleton",
        window_size=16,
        graph="smpl-24",
        laban=True,
        bad_files_log="runs/tiny/old/bad_files.tsv",
    )
    cfg = load_config(path, ["model.name=msg3d_ntu60_tiny"])
    assert type(cfg.data) is SkeletonConfig and (cfg.data.window_size, cfg.data.graph) == (16, "smpl-24")
    assert set(to_dict(cfg)["data"]) == keys(SkeletonConfig)


def test_an_old_config_yaml_with_another_kind_s_key_set_fails(tmp_path):
    path = write_old_config(tmp_path / "config.yaml", window_size=16)
    with pytest.raises(
        ConfigError,
        match=rf"^data.window_size is a key of data.dataset=skeleton or multiperson, not "
        rf"of data.dataset=video; .* \(in {path}\)$",
    ):
        load_config(path)
