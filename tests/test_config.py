"""Config loading: inheritance, overrides, strict keys and types, round trip."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from action_launch.config import ConfigError, dump_config, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_base_inheritance_deep_merges_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"optim": {"lr": 0.1, "momentum": 0.5}, "train": {"epochs": 3}})
    write(tmp_path / "b.yaml", {"optim": {"momentum": 0.8}, "train": {"micro_batch_size": 2}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.yaml", {"_base_": ["../a.yaml", "../b.yaml"], "train": {"epochs": 7}})
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.8
    assert cfg.train.epochs == 7 and cfg.train.micro_batch_size == 2
    assert cfg.optim.nesterov is True  # untouched default survives the merge


def test_single_base_string_and_cycle(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml", "seed": 3})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "b.yaml", {"seed": 1, "name": "from_b"})
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.seed, cfg.name) == (3, "from_b")


def test_overrides_are_yaml_scalars():
    tree = parse_overrides(
        [
            "optim.lr=0.01",
            "data.num_frames=16",
            "model.attention=joint_space_time",
            "train.max_steps_per_epoch=null",
            "data.mean=[0.5,0.5,0.5]",
            "deterministic=true",
        ]
    )
    assert tree == {
        "optim": {"lr": 0.01},
        "data": {"num_frames": 16, "mean": [0.5, 0.5, 0.5]},
        "model": {"attention": "joint_space_time"},
        "train": {"max_steps_per_epoch": None},
        "deterministic": True,
    }
    cfg = load_config(None, ["optim.lr=0.01", "data.num_frames=16", "model.attention=joint_space_time"])
    assert cfg.optim.lr == 0.01 and cfg.data.num_frames == 16 and cfg.model["attention"] == "joint_space_time"


def test_unknown_key_names_path_and_closest(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lrr=0.1"])
    assert "unknown key optim.lrr; did you mean optim.lr?" in str(err.value)
    assert "command-line override" in str(err.value)
    path = write(tmp_path / "x.yaml", {"train": {"epoch": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key train.epoch; did you mean train.epochs?" in str(err.value) and str(path) in str(err.value)


def test_an_override_is_named_as_the_origin_of_every_prefix_of_its_key(tmp_path):
    path = write(tmp_path / "x.yaml", {"train": {"epochs": 3}})
    with pytest.raises(ConfigError) as err:  # fails at `trian`, the override's first part
        load_config(path, ["trian.epochs=2"])
    assert str(err.value) == "unknown key trian; did you mean train? (in command-line override)"
    with pytest.raises(ConfigError, match=r"data.mean\[1\]: expected float, got 'x' .* \(in command-line override\)"):
        load_config(path, ["data.mean=[0.4,x,0.4]"])
    path = write(tmp_path / "y.yaml", {"trian": {"epochs": 3}})
    with pytest.raises(ConfigError, match=rf"unknown key trian; did you mean train\? \(in {path}\)"):
        load_config(path, ["train.epochs=2"])


def test_wrong_type_names_path_type_and_value():
    with pytest.raises(ConfigError, match=r"optim.lr: expected float, got 'abc' \(str\)"):
        load_config(None, ["optim.lr=abc"])
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 2.5 \(float\)"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match=r"train.zero_stage: expected one of 0, 1, 2, got 3"):
        load_config(None, ["train.zero_stage=3"])
    with pytest.raises(
        ConfigError, match=r"optim.name: expected one of 'sgd', 'adamw', got 'adam'; did you mean 'adamw'"
    ):
        load_config(None, ["optim.name=adam"])
    with pytest.raises(ConfigError, match=r"deterministic: expected bool"):
        load_config(None, ["deterministic=1"])


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path / "x.yaml", "optim:\n  weight_decay: 1e-4\n")
    assert load_config(path).optim.weight_decay == pytest.approx(1e-4)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "a.yaml", {"_base_": "gone.yaml"})
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(tmp_path / "a.yaml")


def test_model_section_checked_against_preset_constructor():
    with pytest.raises(ConfigError, match="unknown key model.num_clases; did you mean model.num_classes?"):
        load_config(None, ["model.num_clases=5"])
    with pytest.raises(ConfigError, match="model.depth: expected int"):
        load_config(None, ["model.depth=deep"])
    with pytest.raises(ConfigError, match="unknown model 'timesformer_tin'; did you mean 'timesformer_tiny'"):
        load_config(None, ["model.name=timesformer_tin"])


@pytest.fixture
def num_class_warning_armed(monkeypatch):
    """The deprecated-name warning is given once per process: re-arm it for the test."""
    from action_launch.models import _registry

    monkeypatch.setattr(_registry, "_num_class_warned", False, raising=False)


def test_old_model_num_class_is_read_as_num_classes(tmp_path, num_class_warning_armed):
    # MS-G3D configs used to say model.num_class; an old file still loads, as num_classes, warning once.
    old = write(tmp_path / "old.yaml", {"model": {"name": "msg3d_ntu60_tiny", "num_class": 5}})
    with pytest.warns(FutureWarning, match=r"model.num_class \(in .*old.yaml\).*deprecated.*num_classes"):
        cfg = load_config(old)
    assert cfg.model == {"name": "msg3d_ntu60_tiny", "num_classes": 5}
    dump_config(cfg, tmp_path / "resolved.yaml")  # the resolved config is written with the new name
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["model"] == cfg.model
    # the new name works for every model, MS-G3D included; a command-line override beats an old file's value
    assert load_config(None, ["model.name=msg3d_ntu60_tiny", "model.num_classes=7"]).model["num_classes"] == 7
    assert load_config(old, ["model.num_classes=7"]).model == {"name": "msg3d_ntu60_tiny", "num_classes": 7}
    assert load_config(None, ["model.num_class=3"]).model == {"name": "timesformer_tiny", "num_classes": 3}
    both = write(tmp_path / "both.yaml", {"model": {"name": "msg3d_ntu60_tiny", "num_class": 5, "num_classes": 6}})
    with pytest.raises(
        ConfigError, match=r"model.num_class=5 \(deprecated\) and model.num_classes=6 disagree.*both.yaml"
    ):
        load_config(both)
    with pytest.raises(ConfigError, match="model.num_classes: expected int"):
        load_config(old, ["model.num_classes=many"])


def test_msg3d_configs_use_num_classes():
    for path in sorted((REPO / "configs" / "msg3d").glob("*.yaml")):
        assert "num_class:" not in path.read_text(), path


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=0.02", "data.train_short_side=[40,48]", "optim.betas=[0.8,0.9]"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_print_config_cli():
    out = subprocess.run(
        [sys.executable, "launch/train.py", "--print-config", "optim.lr=0.125", "name=printed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["optim"]["lr"] == 0.125 and printed["name"] == "printed"
    bad = subprocess.run(
        [sys.executable, "launch/train.py", "--print-config", "optim.lrr=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "did you mean optim.lr?" in bad.stderr


def test_a_cosine_warmup_as_long_as_the_run_is_refused():
    """The warmup ramps toward the cosine's value at its end: for a run no longer than it, that is final_lr (0)."""
    with pytest.raises(
        ConfigError,
        match=r"optim.warmup_epochs=1 >= train.epochs=1 with the cosine schedule.*"
        r"\(in command-line override\)",
    ):
        load_config(REPO / "configs" / "demo.yaml", ["train.epochs=1"])
    assert load_config(REPO / "configs" / "demo.yaml", ["train.epochs=2"]).optim.warmup_epochs == 1
    assert load_config(REPO / "configs" / "demo.yaml", ["train.epochs=1", "optim.schedule=step"]).train.epochs == 1


# ------------------------------------------------------------------ issue 23 item 4: the test: section, deletion, clips
def test_one_recipe_serves_train_and_test_with_a_test_section(tmp_path):
    """`test:` is a section of the run config (it was `unknown key test` for train.py); the command line wins."""
    from action_launch.evaluation.evaluate import load_eval_config

    recipe = write(
        tmp_path / "r.yaml",
        {"_base_": str(REPO / "configs" / "tsm" / "tiny.yaml"), "test": {"aggregate": "sum", "batch_size": 2}},
    )
    cfg = load_config(recipe)
    assert (cfg.test.aggregate, cfg.test.batch_size, cfg.test.split) == ("sum", 2, "test")
    cfg, ecfg = load_eval_config(recipe, ["test.split=val", "test.aggregate=mean"])
    assert (ecfg.aggregate, ecfg.batch_size, ecfg.split) == ("mean", 2, "val") and ecfg is cfg.test
    bad = write(tmp_path / "bad.yaml", {"test": {"aggregat": "sum"}})
    with pytest.raises(ConfigError, match=rf"unknown key test.aggregat; did you mean test.aggregate\? \(in {bad}\)"):
        load_config(bad)
    assert yaml.safe_load(
        subprocess.run(
            [sys.executable, "launch/train.py", "--config", str(recipe), "--print-config"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )["test"] == {"aggregate": "sum", "split": "test", "batch_size": 2}


def test_a_trained_run_reruns_with_another_test_section(tmp_path):
    """How a run is evaluated is no change of what it trained: `test.*` keys are continuation keys; an old
    config.yaml without a `test:` section is no change either."""
    from action_launch.training import checkpoint as ckpt
    from action_launch.training.run_config import ConfigChanged, check_unchanged, write_config

    cfg = load_config(REPO / "configs" / "tsm" / "tiny.yaml", [f"output_dir={tmp_path}"])
    write_config(cfg, cfg.run_dir())
    (cfg.run_dir() / "checkpoints" / ckpt.tag_for(4)).mkdir(parents=True)
    (cfg.run_dir() / "checkpoints" / ckpt.tag_for(4) / ckpt.META).write_text("{}")
    again = load_config(
        REPO / "configs" / "tsm" / "tiny.yaml", [f"output_dir={tmp_path}", "test.aggregate=sum", "test.split=val"]
    )
    assert check_unchanged(again, cfg.run_dir()) == {"test.aggregate": (None, "sum"), "test.split": ("test", "val")}
    saved = yaml.safe_load((cfg.run_dir() / "config.yaml").read_text())
    del saved["test"]  # written before the section existed
    (cfg.run_dir() / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_unchanged(cfg, cfg.run_dir()) == {}
    with pytest.raises(ConfigChanged, match="optim.lr"):
        check_unchanged(
            load_config(REPO / "configs" / "tsm" / "tiny.yaml", [f"output_dir={tmp_path}", "optim.lr=1"]), cfg.run_dir()
        )


def test_an_inherited_key_is_deleted_with_a_tilde_on_the_command_line():
    """`configs/tsm/tiny.yaml model.name=timesformer_tiny` failed on the inherited model.num_segments, with no way
    to remove it (`=null` failed too); `~key` (Hydra's syntax) deletes it, and the error names that way out."""
    tsm = REPO / "configs" / "tsm" / "tiny.yaml"
    with pytest.raises(
        ConfigError,
        match=r"^model.num_segments: timesformer_tiny takes no num_segments \(it takes "
        r"img_size, .*\); delete the inherited key with ~model.num_segments on the "
        rf"command line or `_delete_: true` in the file \(in {tsm}\)$",
    ):
        load_config(tsm, ["model.name=timesformer_tiny"])
    with pytest.raises(ConfigError, match=r"delete the inherited key with ~model.num_segments .*command-line override"):
        load_config(tsm, ["model.name=timesformer_tiny", "model.num_segments=null"])
    cfg = load_config(tsm, ["model.name=timesformer_tiny", "~model.num_segments"])
    assert cfg.model == {"name": "timesformer_tiny", "num_classes": 4}
    assert load_config(tsm, ["~data.sampling"]).data.sampling == "dense"  # back to the default
    with pytest.raises(ConfigError, match=r"~model.num_segmnts: model.num_segmnts is not set, so there is nothing"):
        load_config(tsm, ["~model.num_segmnts"])
    with pytest.raises(ConfigError, match=r"bad override '~model.num_segments=4': ~key deletes a key and takes no"):
        load_config(tsm, ["~model.num_segments=4"])
    with pytest.raises(ConfigError, match="unknown key model.num_clases; did you mean model.num_classes?"):
        load_config(tsm, ["model.num_clases=5"])  # a typo on the command line is still a typo


def test_a_delete_mapping_replaces_what_it_inherits(tmp_path):
    """`_delete_: true` in a mapping replaces the inherited mapping instead of merging into it (mmengine's syntax),
    in a file and on the command line (`model._delete_=true`)."""
    recipe = write(
        tmp_path / "vit.yaml",
        {
            "_base_": str(REPO / "configs" / "tsm" / "tiny.yaml"),
            "model": {"_delete_": True, "name": "timesformer_tiny", "num_classes": 4},
        },
    )
    cfg = load_config(recipe)
    assert cfg.model == {"name": "timesformer_tiny", "num_classes": 4} and cfg.data.sampling == "segment"
    cli = load_config(REPO / "configs" / "tsm" / "tiny.yaml", ["model._delete_=true", "model.name=timesformer_tiny"])
    assert cli.model == {"name": "timesformer_tiny"}
    merged = write(tmp_path / "merged.yaml", {"_base_": "vit.yaml", "model": {"_delete_": False, "depth": 1}})
    assert load_config(merged).model == {"name": "timesformer_tiny", "num_classes": 4, "depth": 1}
    with pytest.raises(ConfigError, match=r"model._delete_: expected true or false, got 'yes please'"):
        load_config(write(tmp_path / "bad.yaml", {"model": {"_delete_": "yes please"}}))


def test_a_model_built_for_one_clip_length_refuses_another_at_load_time():
    """`configs/stabn/tiny.yaml data.num_frames=8` passed validation and failed at the first forward, after DeepSpeed
    started (ST-ABN's temporal attention is T x T). Models that take any length (TSM reads T from its input,
    TimeSformer resizes its time embedding) say nothing."""
    stabn = REPO / "configs" / "stabn" / "tiny.yaml"
    with pytest.raises(
        ConfigError,
        match=r"^data.num_frames=8 but model.num_frames=4: stabn_r50_tiny is built for "
        r"clips of exactly model.num_frames frames; set both to the same value "
        r"\(in command-line override\)$",
    ):
        load_config(stabn, ["data.num_frames=8"])
    with pytest.raises(ConfigError, match=r"^data.num_frames=4 but model.num_frames=8.*\(in command-line override\)$"):
        load_config(stabn, ["model.num_frames=8"])
    with pytest.raises(ConfigError, match=r"data.num_frames=8 but model.num_frames=32: stabn_r50 is built"):
        load_config(None, ["model.name=stabn_r50"])  # the preset's own length counts when the config sets none
    assert load_config(stabn, ["data.num_frames=8", "model.num_frames=8"]).model["num_frames"] == 8
    for family in ("timesformer", "tsm"):
        assert load_config(REPO / "configs" / family / "tiny.yaml", ["data.num_frames=8"]).data.num_frames == 8
    for recipe in sorted((REPO / "configs").rglob("*.yaml")):  # every recipe agrees with its model
        if "sweeps" not in recipe.parts and not recipe.stem.startswith("_"):
            load_config(recipe)
