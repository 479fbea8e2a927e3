"""Checkpoint folder bookkeeping: only committed folders count, pruning keeps `best`."""

from action_launch.training import checkpoint as ckpt


def fake_save(root, step, payload="x"):
    tmp = root / ckpt.tmp_tag_for(step)
    tmp.mkdir(parents=True)
    (tmp / "weights.pt").write_text(payload)
    return tmp


def test_only_committed_checkpoints_are_found(tmp_path):
    fake_save(tmp_path, 10)
    ckpt.commit(tmp_path, 10, {"epoch": 1})
    fake_save(tmp_path, 20)  # interrupted: never committed
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000010"
    assert ckpt.read_meta(ckpt.latest_checkpoint(tmp_path)) == {"epoch": 1}
    removed = ckpt.remove_incomplete(tmp_path)
    assert [p.name for p in removed] == [".tmp-step_00000020"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000010"]


def test_folder_without_meta_is_ignored(tmp_path):
    (tmp_path / "step_00000050").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_prune_keeps_last_k_and_best(tmp_path):
    for step in (1, 2, 3, 4, 5):
        fake_save(tmp_path, step)
        ckpt.commit(tmp_path, step, {})
    ckpt.mark_best(tmp_path, tmp_path / "step_00000002")
    removed = ckpt.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step_00000001", "step_00000003"]
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]
    assert ckpt.best_checkpoint(tmp_path).name == "step_00000002"
    ckpt.mark_best(tmp_path, tmp_path / "step_00000005")
    assert ckpt.best_checkpoint(tmp_path).name == "step_00000005"


def test_recommit_of_same_step_replaces(tmp_path):
    fake_save(tmp_path, 7, "old")
    ckpt.commit(tmp_path, 7, {})
    fake_save(tmp_path, 7, "new")
    ckpt.commit(tmp_path, 7, {})
    assert (tmp_path / "step_00000007" / "weights.pt").read_text() == "new"


def test_prune_keeps_what_a_sweep_trial_has_not_reported(tmp_path):
    """A trial that trains faster than its watcher polls lost validations to keep_last (a missed ASHA rung, and
    synchronous PBT waiting forever for an epoch it never saw): checkpoints after the reported step stay."""
    for step in (6, 12, 18):
        fake_save(tmp_path, step)
        ckpt.commit(tmp_path, step, {})
    ckpt.hold_unreported(tmp_path, 6)  # 12 not reported yet: only 6 may go
    assert [p.name for p in ckpt.prune(tmp_path, keep_last=1)] == ["step_00000006"]
    ckpt.hold_unreported(tmp_path, 12)
    assert [p.name for p in ckpt.prune(tmp_path, keep_last=1)] == ["step_00000012"]
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000018"]
