"""Multi-view evaluation (launch/evaluate.py, launch/test.py) and score fusion (launch/ensemble.py)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from action_launch import datasets, models
from action_launch import ensemble as ensemble_command
from action_launch.config import ConfigError, dump_config, load_config
from action_launch.evaluation import ensemble
from action_launch.evaluation import evaluate as ev
from action_launch.tracking.tracker import evaluation_folders
from action_launch.training import checkpoint as ckpt


class ChannelMeans(nn.Module):
    """A known model: the logit of class k is `scale` x the mean of input channel k."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 5, "the evaluator must fold the views into the batch"
        return self.scale * x.mean(dim=(2, 3, 4))


def _views(*view_logits) -> torch.Tensor:
    """One video whose views make ChannelMeans output the given logits: (V, C=K, T=2, H=2, W=2)."""
    return torch.tensor(view_logits, dtype=torch.float32)[:, :, None, None, None].expand(-1, -1, 2, 2, 2).clone()


# Video 0: one confident view for class 0, two moderate ones for class 1. Summed logits (10, 6)
# pick class 0; mean softmax (0.365, 0.635) picks class 1: the protocols disagree predictably.
DISAGREE = _views([10.0, 0.0], [0.0, 3.0], [0.0, 3.0])
# Video 1: every view says class 1 (both protocols agree).
AGREE = _views([0.0, 2.0], [1.0, 2.0], [0.0, 1.0])


def test_aggregate_views_mean_softmax_vs_sum():
    logits = ChannelMeans()(DISAGREE).detach()[None]  # (1, V, K)
    mean_softmax = ev.aggregate_views(logits, "mean_softmax")
    expected = torch.tensor([[1 / (1 + math.exp(-10)), math.exp(-3) / (1 + math.exp(-3))]])
    expected = torch.stack([(expected[0, 0] + 2 * expected[0, 1]) / 3, 1 - (expected[0, 0] + 2 * expected[0, 1]) / 3])
    torch.testing.assert_close(mean_softmax[0], expected.float())
    assert mean_softmax.argmax().item() == 1
    torch.testing.assert_close(ev.aggregate_views(logits, "sum"), torch.tensor([[10.0, 6.0]]))
    torch.testing.assert_close(ev.aggregate_views(logits, "mean"), torch.tensor([[10 / 3, 2.0]]))
    with pytest.raises(ValueError, match="mean_softmax"):
        ev.aggregate_views(logits, "max")


def test_predict_accepts_views_and_plain_clips():
    model = ChannelMeans()
    batch = torch.stack([DISAGREE, AGREE])  # (B=2, V=3, C, T, H, W)
    labels = torch.tensor([0, 1])
    cpu = torch.device("cpu")

    def scores(inputs, how, views=None):
        return torch.from_numpy(ev.predict(model, [(inputs, labels)], how, cpu, views)[0])

    with torch.no_grad():
        by_loop = torch.stack([model(video).sum(0) for video in batch])
        torch.testing.assert_close(scores(batch, "sum"), by_loop)
        plain = scores(batch[:, 0], "mean_softmax")  # (B, C, T, H, W): one view each
        torch.testing.assert_close(plain, model(batch[:, 0]).softmax(-1))
        torch.testing.assert_close(scores(batch[:, 0], "sum", views=False), model(batch[:, 0]))


def test_views_are_declared_by_the_dataset():
    assert ev.has_views(ViewSet(None, "test"), "test") and not ev.has_views(ViewSet(None, "val"), "val")
    assert not ev.has_views(object(), "test")  # e.g. skeletons or 6-D multi-person clips: plain samples


class ViewSet(torch.utils.data.Dataset):
    """A test split that returns (views, label) per video, as the video data layer's test split does."""

    def __init__(self, cfg, split):
        self.videos = [DISAGREE, AGREE, DISAGREE * -1, AGREE]
        self.labels = [0, 1, 1, 1]
        self.ids = [f"video_{i}.mp4" for i in range(len(self.videos))]
        self.class_names = ["left", "right"]
        self.num_views = 3  # the test split returns views

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        return self.videos[i], self.labels[i]


@pytest.fixture()
def known_run(tmp_path, monkeypatch):
    """A run folder with one complete checkpoint of ChannelMeans (scale 1) and the ViewSet as data."""
    monkeypatch.setattr(models, "build", lambda section: ChannelMeans())
    monkeypatch.setattr(datasets, "build", lambda cfg, split: ViewSet(cfg, split))
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "experiment=tests",
            "name=known",
            "data.num_workers=0",
            "train.micro_batch_size=3",
            "tracking.enabled=false",
        ],
    )
    folder = cfg.run_dir() / "checkpoints" / ckpt.tag_for(7)
    folder.mkdir(parents=True)
    torch.save({"module": ChannelMeans().state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": 7}))
    return cfg, folder


@pytest.mark.parametrize("aggregate, top1", [("mean_softmax", 50.0), ("sum", 100.0)])
def test_evaluate_checkpoint_writes_predictions_and_metrics(known_run, aggregate, top1):
    cfg, folder = known_run
    metrics = ev.evaluate_checkpoint(cfg, folder, ev.EvalConfig(aggregate=aggregate))
    run_dir = cfg.run_dir()
    pred = ev.load_predictions(run_dir)
    assert pred["scores"].shape == (4, 2) and pred["labels"].tolist() == [0, 1, 1, 1]
    assert pred["ids"].tolist() == [f"video_{i}.mp4" for i in range(4)]
    assert str(pred["aggregate"]) == aggregate and str(pred["checkpoint"]) == str(folder.resolve())
    if aggregate == "sum":
        np.testing.assert_allclose(pred["scores"][0], [10.0, 6.0], rtol=1e-6)
    else:
        np.testing.assert_allclose(pred["scores"].sum(1), 1.0, rtol=1e-6)
    # videos 0 and 2 (mirror images) are right only when summing; videos 1 and 3 either way
    assert metrics["top1"] == top1
    assert metrics["class_acc/left"] == (100.0 if aggregate == "sum" else 0.0)
    assert metrics["class_acc/right"] == pytest.approx(100.0 if aggregate == "sum" else 200 / 3)
    assert {"top5", "mean_class_acc", "macro_f1"} <= set(metrics)
    cm = json.loads((run_dir / "test" / "confusion_matrix.json").read_text())
    assert cm["classes"] == ["left", "right"] and np.array(cm["rows_true_cols_predicted"]).sum() == 4
    assert (run_dir / "test" / "confusion_matrix.png").is_file()
    # logged through the journal of the evaluation's own run, at the checkpoint's step (MLflow itself is off here)
    (folder,) = evaluation_folders(run_dir)
    events = [json.loads(line) for line in (run_dir / folder / "journal.jsonl").read_text().splitlines()]
    (logged,) = [e for e in events if e["kind"] == "metrics"]
    assert logged["step"] == 7 and logged["values"]["test/top1"] == top1
    assert {e["path"] for e in events if e["kind"] == "artifact"} >= {"predictions.npz", "test/metrics.json"}


def test_test_entry_point_resolves_the_run_folder(known_run, capsys):
    from action_launch import test as test_entry

    cfg, folder = known_run
    assert test_entry.main(["--checkpoint", str(cfg.run_dir()), "test.aggregate=sum", "--no-track"]) == 0
    assert "test/top1: 100.0000" in capsys.readouterr().out
    assert test_entry.main(["--checkpoint", str(cfg.run_dir()), "test.aggregate=max"]) == 2
    assert "test.aggregate" in capsys.readouterr().err


def test_load_eval_config_splits_off_the_test_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: e\ntest:\n  aggregate: sum\n")
    cfg, ecfg = ev.load_eval_config(path, ["test.batch_size=2", "seed=3"])
    assert (ecfg.aggregate, ecfg.batch_size, ecfg.split) == ("sum", 2, "test") and cfg.seed == 3
    with pytest.raises(ConfigError, match="unknown key test.aggregat; did you mean test.aggregate?"):
        ev.load_eval_config(path, ["test.aggregat=sum"])
    with pytest.raises(ConfigError, match="test.split"):
        ev.load_eval_config(path, ["test.split=train"])


def test_regression_metrics_are_mse_per_output():
    scores = np.array([[0.0, 1.0], [2.0, 1.0]])
    labels = np.array([[1.0, 1.0], [0.0, 3.0]])
    metrics = ev.evaluation_metrics(scores, labels, regression=True)
    assert metrics == {"mse": pytest.approx(2.25), "mse/0": pytest.approx(2.5), "mse/1": pytest.approx(2.0)}


def test_resolve_checkpoint_best_and_last(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        (root / ckpt.tag_for(step)).mkdir(parents=True)
        (root / ckpt.tag_for(step) / ckpt.META).write_text("{}")
    ckpt.mark_best(root, root / ckpt.tag_for(2))
    assert ev.resolve_checkpoint(tmp_path / "run", "best").name == ckpt.tag_for(2)
    assert ev.resolve_checkpoint(tmp_path / "run", "last").name == ckpt.tag_for(4)
    assert ev.resolve_checkpoint(root / ckpt.tag_for(4)) == root / ckpt.tag_for(4)
    assert ev.run_dir_of(root / ckpt.tag_for(4)) == (tmp_path / "run").resolve()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ev.resolve_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------ ensemble


def _predictions(tmp_path, name, scores, labels, ids):
    return ev.save_predictions(
        tmp_path / name / "predictions.npz", np.asarray(scores, dtype=np.float64), np.asarray(labels), ids
    ).parent


def test_ensemble_fuses_in_video_order(tmp_path, capsys):
    joint = _predictions(
        tmp_path, "joint", [[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.1, 0.0, 0.2]], [0, 2, 2], ["a", "b", "c"]
    )
    # the bone stream lists the same videos in another order
    bone = _predictions(
        tmp_path, "bone", [[0.0, 0.0, 3.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], [2, 0, 2], ["c", "a", "b"]
    )
    fused = ensemble.fuse(ev.load_predictions(joint), ev.load_predictions(bone), alpha=0.5)
    np.testing.assert_allclose(fused["scores"], [[2.0, 2.0, 0.0], [0.5, 1.0, 0.5], [0.1, 0.0, 1.7]])
    assert fused["ids"].tolist() == ["a", "b", "c"] and fused["labels"].tolist() == [0, 2, 2]
    assert ensemble_command.main([str(joint), str(bone), "--alpha", "0.5", "--out", str(tmp_path / "f.npz")]) == 0
    out = capsys.readouterr().out
    # joint alone: a ok, b wrong (1), c ok -> 66.67; fused: a tie (argmax 0) ok, b wrong, c ok -> 66.67
    assert "A: top1 66.67  top5 100.00" in out and "A + 0.5 B: top1 66.67" in out
    np.testing.assert_allclose(ev.load_predictions(tmp_path / "f.npz")["scores"], fused["scores"])


def test_ensemble_refuses_different_videos_or_labels(tmp_path, capsys):
    a = _predictions(tmp_path, "a", [[1.0, 0.0]], [0], ["x"])
    b = _predictions(tmp_path, "b", [[1.0, 0.0]], [0], ["y"])
    c = _predictions(tmp_path, "c", [[1.0, 0.0]], [1], ["x"])
    with pytest.raises(ValueError, match="different videos"):
        ensemble.fuse(ev.load_predictions(a), ev.load_predictions(b))
    with pytest.raises(ValueError, match="labels"):
        ensemble.fuse(ev.load_predictions(a), ev.load_predictions(c))
    assert ensemble_command.main([str(a), str(tmp_path / "missing")]) == 2
    assert "no predictions" in capsys.readouterr().err


def test_regression_is_averaged_per_participant():
    scores = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    labels = np.array([[2.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mean_scores, mean_labels, names = ev.average_by_group(scores, labels, ["p1", "p1", "p2"])
    assert names == ["p1", "p2"]
    np.testing.assert_allclose(mean_scores, [[2.0, 1.0], [5.0, 5.0]])
    np.testing.assert_allclose(mean_labels, [[2.0, 1.0], [4.0, 4.0]])
    assert ev.evaluation_metrics(mean_scores, mean_labels, regression=True)["mse"] == pytest.approx(0.5)


def test_test_metrics_and_predictions_reach_mlflow(known_run):
    from mlflow.tracking import MlflowClient

    cfg, folder = known_run
    cfg.tracking.enabled = True
    ev.evaluate_checkpoint(cfg, folder, ev.EvalConfig(aggregate="sum"))
    client = MlflowClient(f"sqlite:///{cfg.output_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["test.aggregate"] == "sum"
    assert run.data.params["test.views"] == "3" and run.data.params["test.checkpoint"] == folder.name
    assert run.data.metrics["test/top1"] == 100.0 and run.data.metrics["test/class_acc/left"] == 100.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/top1")] == [7]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert {"test/predictions.npz", "test/metrics.json", "test/confusion_matrix.png"} <= artifacts


def test_views_are_combined_as_the_data_protocol_says_unless_test_aggregate_is_set(known_run, monkeypatch):
    """Without test.aggregate, the views are combined by the protocol's rule: ViewSet's video 0 is right only when
    its logits are summed (PySlowFast's rule), wrong when its probabilities are averaged (native's)."""
    cfg, folder = known_run
    for rule, top1 in (("sum", 100.0), ("mean_softmax", 50.0)):
        monkeypatch.setattr(
            ViewSet, "protocol", SimpleNamespace(name="x", aggregate=rule, describe=dict), raising=False
        )
        assert ev.evaluate_checkpoint(cfg, folder, track=False)["top1"] == top1
        assert str(ev.load_predictions(cfg.run_dir())["aggregate"]) == rule
    assert ev.evaluate_checkpoint(cfg, folder, ev.EvalConfig(aggregate="sum"), track=False)["top1"] == 100.0


def test_the_protocol_a_split_is_evaluated_with_is_said_and_logged(video_set):
    cfg = load_config(
        "configs/timesformer/tiny.yaml",
        [f"data.root={video_set}", "data.protocol=pyslowfast", "data.test_num_clips=2", "data.test_num_crops=3"],
    )
    dataset = datasets.build(cfg.data, "test")
    how = ev.view_aggregate(ev.EvalConfig(), dataset, regression=False)
    params = ev.protocol_params(dataset, "test", how)
    assert (how, params["test.protocol"], params["test.num_clips"], params["test.num_crops"], params["test.views"]) == (
        "sum",
        "pyslowfast",
        "2",
        "3",
        "6",
    )
    assert ev.protocol_line(params, regression=False) == (
        "test protocol pyslowfast on the test split: 2 clip(s) x 3 crop(s) = 6 view(s) of 32 px (short side 32), "
        "combined by the sum of their logits"
    )
    val = ev.protocol_params(datasets.build(cfg.data, "val"), "val", how)
    assert (val["test.views"], val["test.protocol"]) == ("1", "pyslowfast") and "test.num_crops" not in val


def test_published_weights_are_evaluated_into_a_run_of_their_own(known_run, tmp_path, capsys):
    """test.py --weights: no training run folder; each evaluation gets a new folder and a new MLflow run whose
    record names the file (path and sha256), the config and the protocol."""
    import hashlib

    from mlflow.tracking import MlflowClient

    from action_launch import test as test_entry

    cfg, _ = known_run
    config = cfg.run_dir().parent / "known.yaml"
    dump_config(cfg, config)
    weights = tmp_path / "published.pth"
    state = ChannelMeans().state_dict()
    state["scale"] = torch.tensor(2.0)
    torch.save({"state_dict": state}, weights)
    args = ["--weights", str(weights), "--config", str(config), "tracking.enabled=true", "test.aggregate=sum"]
    assert test_entry.main(args) == 0
    assert test_entry.main(args) == 0  # a second evaluation keeps the first one's record
    first, second = (cfg.run_dir().parent / f"known@published{s}" for s in ("", "-2"))
    assert "test/top1: 100.0000" in capsys.readouterr().out and first.is_dir() and second.is_dir()
    assert not cfg.run_dir().joinpath("predictions.npz").exists()  # the training run folder is untouched
    np.testing.assert_allclose(ev.load_predictions(first)["scores"][0], [20.0, 12.0], rtol=1e-6)  # scale 2 loaded
    client = MlflowClient(f"sqlite:///{cfg.output_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["known@published", "known@published-2"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["test/top1"] == 100.0
    assert run.data.tags["eval.weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert run.data.tags["eval.weights"] == str(weights.resolve())
    assert run.data.params["test.aggregate"] == "sum" and run.data.params["data.protocol"] == "native"
    assert test_entry.main(["--weights", str(weights)]) == 2
    assert "--weights needs --config" in capsys.readouterr().err
    assert test_entry.main(["--weights", str(tmp_path / "nope.pth"), "--config", str(config)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_published_weights_whose_classifier_does_not_fit_are_refused(tmp_path):
    """Training may replace a head of another size; evaluating one the file does not hold would be chance level."""
    theirs = models.create("tsm_r50_tiny", num_classes=5)
    torch.save({"state_dict": theirs.state_dict()}, tmp_path / "five.pth")
    cfg = load_config("configs/tsm/tiny.yaml", ["model.num_classes=4"])
    with pytest.raises(ValueError, match=r"--weights .*five.pth: the classifier .* does not load .*model.num_classes"):
        ev.load_published_weights(cfg, tmp_path / "five.pth")
    model, report = ev.load_published_weights(
        load_config("configs/tsm/tiny.yaml", ["model.num_classes=5"]), tmp_path / "five.pth"
    )
    assert report.complete and torch.equal(model.state_dict()["fc.weight"], theirs.state_dict()["fc.weight"])


def test_evaluation_loads_as_training_does_with_its_batch_time_limit(video_set):
    """test.py's loader is `training.loaders.make_loader`'s: its workers start the same way and a stuck one
    raises DataTimeout after train.data_timeout_s instead of hanging the evaluation."""
    cfg = load_config("configs/demo.yaml", [f"data.root={video_set}", "train.data_timeout_s=7", "data.num_workers=1"])
    dataset = datasets.build(cfg.data, "test")
    loader = ev.evaluation_loader(dataset, ev.evaluation_groups(dataset, 4, memory=False), cfg, name="test")
    assert (loader.timeout, loader.name, loader.num_workers) == (7, "test", 1)
    assert [i for batch in loader.batch_sampler for i in batch] == list(range(len(dataset)))  # each once, in order


def test_the_confusion_matrix_and_class_metrics_are_labelled_with_classes_txt(video_set, tmp_path):
    """A real video set with a classes.txt: its datasets name their classes, and test.py's confusion matrix and
    per-class accuracies carry those names; without a classes.txt they stay class indices."""
    cfg = load_config(
        "configs/timesformer/tiny.yaml",
        [
            f"data.root={video_set}",
            f"output_dir={tmp_path}",
            "experiment=tests",
            "name=named",
            "data.num_workers=0",
            "data.test_num_clips=1",
            "tracking.enabled=false",
        ],
    )
    names = (video_set / "classes.txt").read_text().split()
    assert names == ["up", "down", "grow", "shrink"]
    assert datasets.build(cfg.data, "val").class_names == datasets.build(cfg.data, "test").class_names == names
    folder = cfg.run_dir() / "checkpoints" / ckpt.tag_for(1)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"module": models.build(cfg.model).state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": 1}))
    metrics = ev.evaluate_checkpoint(cfg, folder)
    cm = json.loads((cfg.run_dir() / "test" / "confusion_matrix.json").read_text())
    assert cm["classes"] == names and np.array(cm["rows_true_cols_predicted"]).sum() == 16
    assert {f"class_acc/{name}" for name in names} == {k for k in metrics if k.startswith("class_acc/")}

    bare = tmp_path / "bare"  # the same lists, no classes.txt
    bare.mkdir()
    for entry in video_set.iterdir():
        if entry.name != "classes.txt":
            (bare / entry.name).symlink_to(entry)
    bare_cfg = load_config("configs/timesformer/tiny.yaml", [f"data.root={bare}"])
    assert datasets.build(bare_cfg.data, "val").class_names is None
    from action_launch.training.confusion import class_labels

    assert class_labels(None, 4) == ["0", "1", "2", "3"] and class_labels(names[:3], 4) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("test_list, split", [(None, "val"), ("test.txt", "test")])
def test_the_split_whose_files_were_read_is_logged(known_run, test_list, split):
    """The test split without a data.test_list reads the val list: `test.split` says val (it said test)."""
    cfg, _ = known_run
    cfg.data.test_list = test_list
    predictions = ev.evaluate_model(cfg, ChannelMeans(), ev.EvalConfig())
    assert (predictions.params["test.split"], predictions.params["test.views"]) == (split, "3")


def test_a_config_test_py_cannot_evaluate_is_one_line(video_set, tmp_path):
    """`test.py ... data.test_num_clips=3` on a segment-sampling run: one error line, exit 2 (was a traceback)."""
    import subprocess
    import sys

    from conftest import REPO

    cfg = load_config(
        "configs/tsm/tiny.yaml",
        [
            f"data.root={video_set}",
            f"output_dir={tmp_path}",
            "name=seg",
            "data.sampling=segment",
            "data.num_workers=0",
            "tracking.enabled=false",
        ],
    )
    folder = cfg.run_dir() / "checkpoints" / ckpt.tag_for(1)
    folder.mkdir(parents=True)
    torch.save({"module": models.build(cfg.model).state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": 1}))
    proc = subprocess.run(
        [sys.executable, "launch/test.py", "data.test_num_clips=3", "--checkpoint", str(folder), "--no-track"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: data.test_num_clips=3 with data.sampling=segment: 1 (segment centres) or 2 (centres and starts) clips"
    ], proc.stderr[-2000:]
