"""Grad-CAM (launch/evaluation/gradcam.py) and `launch/explain.py`: maps, their layouts, rendering, MLflow artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from action_launch import models
from action_launch.config import dump_config, load_config
from action_launch.evaluation import gradcam
from action_launch.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ColourDetector(nn.Module):
    """A known model: feature c = input channel c (a 1x1x1 conv), class c = the mean of feature c.

    With a red square (channel 0) in one place and a green one (channel 1) in another, class 0
    depends only on the red square's pixels and class 1 only on the green one's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(3, 2, 1, bias=False))
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(3)[:2].view(2, 3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3, 4))


def _two_squares() -> torch.Tensor:
    """(1, 3, 4, 16, 16): a red square top-left in frame 1, a green one bottom-right in frame 3."""
    clip = torch.zeros(1, 3, 4, 16, 16)
    clip[0, 0, 1, 2:6, 2:6] = 1.0
    clip[0, 1, 3, 10:14, 9:13] = 1.0
    return clip


@pytest.mark.parametrize("target, where", [(0, (1, slice(2, 6), slice(2, 6))), (1, (3, slice(10, 14), slice(9, 13)))])
def test_grad_cam_highlights_the_region_that_drives_the_class(target, where):
    result = gradcam.grad_cam(ColourDetector().eval(), _two_squares(), target=target)
    assert result.layer == "features"
    cam = result.cam[0]
    assert cam.shape == (4, 16, 16) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    inside = torch.zeros_like(cam, dtype=torch.bool)
    inside[where] = True
    assert cam[inside].min() == pytest.approx(1.0)
    assert cam[~inside].max() == pytest.approx(0.0, abs=1e-6)  # the other square, and the other frames, are dark


def test_grad_cam_defaults_to_the_predicted_class():
    clip = _two_squares()
    clip[0, 1] *= 3  # the green square is brighter: class 1 wins
    result = gradcam.grad_cam(ColourDetector().eval(), clip)
    assert result.target.tolist() == [1]
    assert result.cam[0, 3, 10:14, 9:13].min() == pytest.approx(1.0) and result.cam[0, 1].max() == 0


@pytest.mark.parametrize(
    "preset, kwargs, size, layer",
    [
        ("stabn_r50_tiny", {}, 64, "layer4"),  # perception branch's last stage, 2x2 at 64 px
        ("tsm_r50_tiny", {}, 64, "layer4.0"),  # the last bottleneck, (N*T, C, h, w)
        ("timesformer_tiny", {}, 32, "blocks.0"),  # input of the last block: (N, 1 + n*T, D) tokens
        ("timesformer_tiny", {"attention": "space_only"}, 32, "blocks.0"),  # (N*T, 1 + n, D) tokens
    ],
)
def test_grad_cam_on_tiny_presets_picks_the_last_feature_map(preset, kwargs, size, layer):
    torch.manual_seed(0)
    model = models.create(preset, **kwargs).eval()
    clip = torch.randn(2, 3, 4, size, size)
    result = gradcam.grad_cam(model, clip)
    assert result.layer == layer
    assert result.cam.shape == (2, 4, size, size)
    assert result.cam.min() >= 0 and torch.allclose(result.cam.flatten(1).amax(1), torch.ones(2))
    assert result.probs.shape == (2, 4) and not any(p.grad is not None for p in model.parameters())


def test_token_layouts_unfold_to_the_patch_grid():
    # (N, 1 + n*T, D) patch-major: token 1 + p*T + t is patch p = (i, j) of frame t
    n, t, d = 1, 3, 2
    tokens = torch.zeros(n, 1 + 4 * t, d)
    for p in range(4):
        for f in range(t):
            tokens[0, 1 + p * t + f] = torch.tensor([p, f])
    grid = gradcam.as_video_map(tokens, n, t)
    assert grid.shape == (1, d, t, 2, 2)
    assert grid[0, 0, 2].tolist() == [[0, 1], [2, 3]] and (grid[0, 1, 2] == 2).all()
    assert gradcam.as_video_map(torch.zeros(2, 5), 2, 3) is None  # logits are no map


def test_a_named_layer_is_checked():
    model = ColourDetector().eval()
    with pytest.raises(ValueError, match="close: features"):
        gradcam.grad_cam(model, _two_squares(), layer="feature")
    assert gradcam.grad_cam(model, _two_squares(), layer="features.0").layer == "features.0"


def test_rendering_gif_and_png_strip(tmp_path):
    from PIL import Image

    frames = np.zeros((3, 8, 10, 3), np.uint8)
    heat = np.zeros((3, 8, 10))
    heat[:, 0, 0] = 1.0
    lit = gradcam.overlay(frames, heat)
    assert lit[0, 0, 0].tolist() == [64, 0, 0] and lit[0, 5, 5].tolist() == [0, 0, 64]  # jet: red hot, blue cold
    images = gradcam.compose([frames, lit], [f"frame {i}" for i in range(3)], min_side=40)
    assert images[0].size == (2 * 50, 40 + 14)
    gif = gradcam.save_images(images, str(tmp_path / "x.gif"))
    with Image.open(gif) as img:
        assert img.n_frames == 3
    with Image.open(gradcam.save_images(images, str(tmp_path / "x.png"))) as img:
        assert img.size == (100, 3 * 54)
    with pytest.raises(ValueError, match=".gif or .png"):
        gradcam.save_images(images, str(tmp_path / "x.jpg"))


# ------------------------------------------------------------------------------ explain.py end to end


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from action_launch.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("clips"), num_train=2, num_val=2, size=32, frames=24)


def _tracked_run(tmp_path, clips, config: str, step: int = 3):
    """A run folder with a checkpoint of an initialised model and a real MLflow run (SQLite in tmp_path)."""
    from action_launch.tracking.tracker import Tracker

    cfg = load_config(config, [f"data.root={clips}", f"output_dir={tmp_path}", "experiment=tests", "name=explained"])
    run_dir = cfg.run_dir()
    folder = run_dir / "checkpoints" / ckpt.tag_for(step)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"module": models.build(cfg.model).state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": step}))
    tracker = Tracker(run_dir, f"sqlite:///{tmp_path}/mlflow.db", "tests", "explained")
    tracker.start({"model": cfg.model["name"]}, {})
    tracker.finish("FINISHED")
    return cfg, folder, tracker.run_id


def test_explain_writes_a_gif_per_frame_and_logs_it_to_mlflow(tmp_path, clips):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from action_launch import explain

    cfg, folder, run_id = _tracked_run(tmp_path, clips, "configs/stabn/tiny.yaml")
    out = tmp_path / "elsewhere" / "stabn.gif"
    video = sorted((clips / "val").glob("*.mp4"))[0]
    assert (
        explain.main(
            ["--checkpoint", str(cfg.run_dir()), "--video", str(video), "--out", str(out), "--target-class", "2"]
        )
        == 0
    )
    with Image.open(out) as img:
        assert img.n_frames == cfg.data.num_frames == 4
        assert img.size == (3 * 160, 160 + 14)  # input | Grad-CAM | ST-ABN attention, 32 px scaled x5, caption
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert [a.path for a in client.list_artifacts(run_id, "explain")] == ["explain/stabn.gif"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (cfg.run_dir() / "explain" / "stabn.gif").is_file()  # the copy the journal can replay


def test_explain_png_strip_for_a_transformer_without_tracking(tmp_path, clips, capsys):
    from PIL import Image

    from action_launch import explain

    cfg, folder, run_id = _tracked_run(tmp_path, clips, "configs/timesformer/tiny.yaml")
    out = cfg.run_dir() / "cam.png"
    video = sorted((clips / "val").glob("*.mp4"))[1]
    assert explain.main(["--checkpoint", str(folder), "--video", str(video), "--out", str(out), "--no-track"]) == 0
    assert "Grad-CAM over blocks.0" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.height > img.width  # 4 frames top to bottom, two panels each
    assert (
        explain.main(["--checkpoint", str(folder), "--video", str(video), "--out", str(out), "--layer", "blockz"]) == 2
    )
    assert "close: blocks" in capsys.readouterr().err


def test_explain_prints_the_class_name_of_classes_txt(tmp_path, clips, capsys):
    """The data root's classes.txt names the explained class in the printed line (and in the captions)."""
    from action_launch import explain

    cfg, folder, _ = _tracked_run(tmp_path, clips, "configs/timesformer/tiny.yaml")
    video = sorted((clips / "val").glob("*.mp4"))[0]
    out = tmp_path / "cam.png"
    assert (
        explain.main(
            ["--checkpoint", str(folder), "--video", str(video), "--out", str(out), "--no-track", "--target-class", "2"]
        )
        == 0
    )
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "Grad-CAM over" in line]
    assert line.startswith("class 2 (grow) p=")  # classes.txt: up, down, grow, shrink
    from action_launch.evaluation.explain import class_label

    assert class_label(2, None) == "2" and class_label(4, ["up", "down", "grow", "shrink"]) == "4"


def test_load_clip_is_the_validation_clip_of_the_data_layer(tmp_path, clips):
    from action_launch import datasets
    from action_launch.evaluation.explain import load_clip

    cfg = load_config("configs/stabn/tiny.yaml", [f"data.root={clips}"])
    val = datasets.build(cfg.data, "val")
    torch.testing.assert_close(load_clip(cfg.data, val.items[1].path), val[(1, 0)][0])

    # a frame folder for data.dataset=rawframes: its frames counted from the template
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((40, 48, 3), 20 * i, np.uint8)).save(folder / f"img_{i + 1:05d}.jpg")
    raw = load_config(
        "configs/stabn/tiny.yaml", [f"data.root={clips}", "data.dataset=rawframes", "data.list_format=rawframes"]
    )
    clip = load_clip(raw.data, str(folder))
    assert clip.shape == (3, 4, 32, 32)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_clip(raw.data, str(tmp_path / "missing"))
