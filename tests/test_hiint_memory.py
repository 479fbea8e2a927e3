"""HIINT's memory carried across the consecutive windows of an interaction, in training, validation and
test: the stream sampler (launch/training/loaders.py), the loop helper (launch/training/memory.py), and the tiny
config end to end."""

from __future__ import annotations

import json
import types
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_train
from torch.utils.data import DataLoader

from action_launch import datasets, models
from action_launch.config import load_config
from action_launch.evaluation import evaluate as ev
from action_launch.training import checkpoint as ckpt
from action_launch.training.loaders import BatchShardSampler, SequenceStreamSampler, make_loader, sequences_of
from action_launch.training.memory import WindowMemory, carries_memory
from action_launch.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # see test_regression_validation.py


def _tiny() -> torch.nn.Module:
    return models.create("hiint_cpmt_tiny").eval()


def _meta(*windows):
    return {"interaction": [i for i, _ in windows], "window": torch.tensor([w for _, w in windows])}


def test_window_k_depends_on_window_k_minus_1_only_when_carried():
    torch.manual_seed(1)
    model = _tiny()
    assert carries_memory(model) and not carries_memory(models.create("msg3d_ntu60_tiny"))
    first = torch.randn(2, 2, 8, 10)
    other_first = first.clone()
    other_first[0] = torch.randn(2, 8, 10)  # interaction "a" window 0 differs; "b" window 0 is the same
    second = torch.randn(2, 2, 8, 10)

    def second_logits(first_batch, second_meta):
        memory = WindowMemory()
        with torch.no_grad():
            memory.update(
                _meta(("a", 0), ("b", 0)), model(first_batch, **memory.model_kwargs(_meta(("a", 0), ("b", 0))))
            )
            kwargs = memory.model_kwargs(second_meta)
            return model(second, **kwargs)["logits"], kwargs

    # carried: window 1 of "a" and of "b" follow their window 0
    carried, kwargs = second_logits(first, _meta(("a", 1), ("b", 1)))
    carried_other, _ = second_logits(other_first, _meta(("a", 1), ("b", 1)))
    assert kwargs["carry"].tolist() == [True, True]
    assert (carried[0] - carried_other[0]).abs().max() > 1e-4  # "a" window 1 sees what "a" window 0 held
    torch.testing.assert_close(carried[1], carried_other[1])  # "b" did not change; rows do not mix
    # reset: row 0 is now a new interaction "c" (and "b" restarts at window 0): nothing is carried
    reset, kwargs = second_logits(first, _meta(("c", 1), ("b", 0)))
    reset_other, _ = second_logits(other_first, _meta(("c", 1), ("b", 0)))
    assert kwargs == {}
    torch.testing.assert_close(reset, reset_other)
    with torch.no_grad():
        torch.testing.assert_close(reset, model(second)["logits"])  # = the learned initial memory
    # mixed batch: "a" continues, "c" starts afresh, in one forward
    mixed, kwargs = second_logits(first, _meta(("a", 1), ("c", 0)))
    assert kwargs["carry"].tolist() == [True, False]
    torch.testing.assert_close(mixed[0], carried[0])
    torch.testing.assert_close(mixed[1], reset[1])


def test_memory_helper_needs_window_meta_and_a_memory_output():
    memory = WindowMemory()
    with pytest.raises(ValueError, match="interaction"):
        memory.model_kwargs(None)
    with pytest.raises(TypeError, match="memory"):
        memory.update(_meta(("a", 0)), torch.zeros(1, 3))


SEQUENCES = [[0, 1, 2], [3, 4, 5, 6, 7], [8], [9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 19, 20], [21, 22, 23]]
OWNER = {i: (k, pos) for k, seq in enumerate(SEQUENCES) for pos, i in enumerate(seq)}


@pytest.mark.parametrize("world", [1, 2])
def test_training_streams_keep_order_per_slot(world):
    batch = 3
    samplers = [SequenceStreamSampler(SEQUENCES, batch, world, rank, seed=7) for rank in range(world)]
    length = 24 // (world * batch)
    seen = []
    for sampler in samplers:
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler) == length and all(len(b) == batch for b in batches)
        for slot in range(batch):
            walk = [b[slot][0] for b in batches]
            seen += walk
            for prev, cur in zip(walk, walk[1:]):
                (k0, p0), (k1, p1) = OWNER[prev], OWNER[cur]
                # the next window of the same interaction, or the first window of another one
                assert (k1 == k0 and p1 == p0 + 1) or (k1 != k0 and p1 == 0 and p0 == len(SEQUENCES[k0]) - 1), walk
    assert len(seen) == len(set(seen)) == world * batch * length  # ranks and slots disjoint
    # the keys carry the per-sample seeds of the plain sampler; a resumed epoch continues where it stopped
    full = list(samplers[0])
    samplers[0].set_epoch(2, start=2 * batch)
    assert list(samplers[0]) == full[2:] and len(samplers[0]) == length - 2
    samplers[0].set_epoch(3)
    assert list(samplers[0]) != full  # another epoch, another order of the interactions


@pytest.mark.parametrize("world", [1, 2])
def test_evaluation_streams_walk_whole_interactions(world):
    seen = []
    for rank in range(world):
        batches = list(SequenceStreamSampler(SEQUENCES, 3, world, rank, shuffle=False))
        assert all(isinstance(i, int) for b in batches for i in b)
        assert [len(b) for b in batches] == sorted((len(b) for b in batches), reverse=True)  # only shrinks at the end
        slots = defaultdict(list)
        for b in batches:
            for slot, i in enumerate(b):
                slots[slot].append(i)
        for walk in slots.values():  # each slot walks whole interactions, each from its first window
            starts = [n for n, i in enumerate(walk) if OWNER[i][1] == 0]
            pieces = [walk[a:b] for a, b in zip(starts, starts[1:] + [len(walk)])]
            assert starts[0] == 0 and all(piece == SEQUENCES[OWNER[piece[0]][0]] for piece in pieces)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(24))  # every window exactly once over the ranks


def _write_engagement(root, interactions, windows, rng):
    """Per-person feature windows (10 features = 10 channels x 1 joint, 8 frames); the label of a window
    is set by the previous window (which partner moved more), so history matters."""
    lines = []
    for n in range(interactions):
        prev = 2
        for w in range(windows):
            x = rng.normal(size=(2, 10, 8, 1)).astype(np.float32)
            for p in range(2):
                np.save(root / f"i{n}_w{w}_p{p}.npy", x[p])
            lines.append(f"i{n} {w} {prev} i{n}_w{w}_p0.npy i{n}_w{w}_p1.npy")
            diff = float(np.abs(x[0]).mean() - np.abs(x[1]).mean())
            prev = 0 if diff > 0.05 else 1 if diff < -0.05 else 2
    rng.shuffle(lines)  # the dataset sorts by (interaction, window)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def engagement(tmp_path_factory):
    root = tmp_path_factory.mktemp("engagement")
    rng = np.random.default_rng(0)
    (root / "train.txt").write_text(_write_engagement(root, 8, 5, rng))
    val_root = root / "val"
    val_root.mkdir()
    text = _write_engagement(val_root, 3, 4, rng)
    (root / "val.txt").write_text(
        "\n".join(
            f"{line.split()[0]}v {' '.join(line.split()[1:3])} " + " ".join(f"val/{p}" for p in line.split()[3:])
            for line in text.splitlines()
        )
        + "\n"
    )
    return root


def _sequential(model, dataset):
    """Logits of every window, walking each interaction alone, window by window, memory passed by hand."""
    out = {}
    with torch.no_grad():
        for rec in dataset.interactions:
            memory = None
            for i in dataset.windows(rec):
                result = model(dataset[i][0][None], memory=memory)
                out[i], memory = result["logits"][0], result["memory"]
    return torch.stack([out[i] for i in range(len(dataset))])


def _data_cfg(root):
    return load_config(REPO / "configs/hiint/tiny.yaml", [f"data.root={root}"]).data


def test_evaluation_carries_memory_through_each_interaction(engagement):
    model = _tiny()
    dataset = datasets.build(_data_cfg(engagement), "val")
    assert len(dataset) == 12 and sequences_of(dataset) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert not ev.has_views(datasets.build(_data_cfg(engagement), "test"), "test")  # feature windows: no views
    # 3 interactions on 2 slots: walks are interleaved
    loader = DataLoader(dataset, batch_sampler=BatchShardSampler(ev.evaluation_groups(dataset, 2, memory=True)))
    scores, labels = ev.predict(model, loader, "mean_softmax", torch.device("cpu"), views=False)
    order = ev.loader_indices(loader)
    scores, labels = ev.in_dataset_order(scores, order), ev.in_dataset_order(labels, order)
    expected = _sequential(model, dataset).softmax(-1).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [it.label for it in dataset.items]
    with torch.no_grad():  # without the memory only each interaction's first window would agree
        fresh = model(torch.stack([dataset[i][0] for i in range(12)]))["logits"].softmax(-1).numpy()
    first = [0, 4, 8]
    np.testing.assert_allclose(fresh[first], expected[first], rtol=1e-5, atol=1e-6)
    assert np.abs(np.delete(fresh, first, 0) - np.delete(expected, first, 0)).max(axis=1).min() > 1e-5


class StubEngine:
    """`action_launch.training.engine.Engine`'s step API around a plain module; records what each forward received."""

    def __init__(self, model):
        self.module, self.device, self.global_step = model, torch.device("cpu"), 0
        self.loss_fn = lambda out, y: F.cross_entropy(out["logits"].float(), y)
        self.calls = []

    def train_step_outputs(self, inputs, targets, **model_kwargs):
        self.module.train()
        outputs = self.module(inputs, **model_kwargs)
        loss = self.loss_fn(outputs, targets)
        loss.backward()
        self.calls.append(model_kwargs)
        return loss.detach(), True, {k: v.detach() for k, v in outputs.items()}

    def loss(self, outputs, targets):
        return self.loss_fn(outputs, targets)

    def predict(self, inputs, **model_kwargs):
        with torch.no_grad():
            return self.module.eval()(inputs, **model_kwargs)


def _trainer(engagement, tmp_path):
    cfg = load_config(
        REPO / "configs/hiint/tiny.yaml",
        [f"data.root={engagement}", f"output_dir={tmp_path}", "train.micro_batch_size=3"],
    )
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.memory = cfg, WindowMemory()
    trainer.env = types.SimpleNamespace(world_size=1, rank=0, is_main=True)
    trainer.engine = StubEngine(models.create("hiint_cpmt_tiny"))
    trainer.train_set, trainer.val_set = datasets.build(cfg.data, "train"), datasets.build(cfg.data, "val")
    trainer.sampler = SequenceStreamSampler(sequences_of(trainer.train_set), 3, seed=cfg.seed)
    trainer.train_loader = make_loader(trainer.train_set, trainer.sampler, 3, cfg.data, cfg.seed, drop_last=True)
    trainer.val_loader = make_loader(
        trainer.val_set, SequenceStreamSampler(sequences_of(trainer.val_set), 3, shuffle=False), 3, cfg.data, 0, False
    )
    trainer.logged = []
    trainer.tracker = types.SimpleNamespace(log_metrics=lambda values, step: trainer.logged.append(values))
    return trainer


def test_training_steps_carry_memory_along_each_slot(engagement, tmp_path):
    trainer = _trainer(engagement, tmp_path)
    trainer.sampler.set_epoch(0)
    batches = list(trainer.sampler)
    for batch in trainer.train_loader:
        trainer._train_step(batch)
    calls = trainer.engine.calls
    assert len(calls) == len(batches) == 40 // 3
    owner = {i: (it.interaction, it.window) for i, it in enumerate(trainer.train_set.items)}
    carried = 0
    for t, kwargs in enumerate(calls):
        for slot, (index, _) in enumerate(batches[t]):
            rec, window = owner[index]
            follows = t > 0 and owner[batches[t - 1][slot][0]] == (rec, window - 1)
            flag = bool(kwargs["carry"][slot]) if kwargs else False
            assert flag == follows, (t, slot, rec, window)
            carried += flag
    assert carried >= len(calls) * 3 - 8 - 3  # reset only where a slot meets a new interaction (8) or starts mid-one


def test_validation_of_a_memory_model_walks_interactions(engagement, tmp_path):
    trainer = _trainer(engagement, tmp_path)
    metrics = trainer.validate(epoch=0)
    model, dataset = trainer.engine.module.eval(), trainer.val_set
    logits = _sequential(model, dataset)
    labels = torch.tensor([it.label for it in dataset.items])
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert {"val/top1", "val/macro_f1"} <= set(metrics) and trainer._last_confusion.sum() == 12


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_tiny_hiint_config_trains_and_tests_with_memory(engagement, tmp_path):
    path = "configs/hiint/tiny.yaml"
    args = [f"data.root={engagement}", f"output_dir={tmp_path}", "tracking.enabled=false", "train.log_every_steps=1"]
    run_train(["--config", path, "--test-best", *args], env=ONE_THREAD)
    cfg = load_config(REPO / path, args)
    run_dir = cfg.run_dir()
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    vals = [e for e in events if e["kind"] == "metrics" and "val/macro_f1" in e["values"]]
    assert [e["step"] for e in vals] == [5, 10]  # 40 windows in 5 batches of 8 streams per epoch
    best = ckpt.best_checkpoint(run_dir / "checkpoints")
    assert best.name == ckpt.tag_for(max(vals, key=lambda e: e["values"]["val/macro_f1"])["step"])
    test = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert {"top1", "macro_f1"} <= set(test) and test["checkpoint"] == str(best)
    # the test predictions are the interactions walked window by window with the memory carried
    pred = ev.load_predictions(run_dir)
    dataset = datasets.build(cfg.data, "test")
    model = ev.load_model(cfg, best).eval()
    np.testing.assert_allclose(pred["scores"], _sequential(model, dataset).softmax(-1).numpy(), rtol=1e-4, atol=1e-6)
    assert pred["labels"].tolist() == [it.label for it in dataset.items]


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_carried_memory_is_made_on_the_engine_device(engagement, tmp_path):
    """Training, validation and test of a memory model under the device audit (tests/test_device_audit.py)."""
    from test_device_audit import audited_run

    assert (
        audited_run(
            "configs/hiint/tiny.yaml",
            [
                f"data.root={engagement}",
                f"output_dir={tmp_path}",
                "tracking.enabled=false",
                "train.epochs=1",
                "data.num_workers=0",
                "train.precision=bf16",
            ],
        )
        == []
    )
