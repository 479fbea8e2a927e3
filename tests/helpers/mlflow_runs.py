"""An experiment of training runs written straight into an MLflow store, as `launch/train.py` and `launch/test.py`
record them: three runs with their params, `val/top1`, `best/val/top1` (the best so far, logged when it improves) and
`epoch` per validation, and one evaluation of a checkpoint of the first, nested under it (tags `mlflow.parentRunId`,
`eval.checkpoint`). The first run's last value (0.57) is below its best (0.61)."""

from __future__ import annotations

RUNS_EXPERIMENT = "demo_runs"
# run name -> (optim.lr, data.num_frames, val/top1 per epoch)
RUNS = {
    "lr1e-3_f8": ("0.001", "8", [0.40, 0.61, 0.57]),
    "lr3e-4_f8": ("0.0003", "8", [0.35, 0.48]),
    "lr1e-3_f16": ("0.001", "16", [0.45, 0.52, 0.59]),
}


def build_runs_store(uri: str, artifact_location: str) -> str:
    """Three training runs as train.py logs them (params, `val/top1`, `best/val/top1`, epoch) and one evaluation
    nested under the first (as test.py logs one); returns the evaluation's run name."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from action_launch.tracking.tracker import EVALUATED_TAG, PARENT_TAG

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(RUNS_EXPERIMENT, artifact_location=artifact_location)
    start, first = 1_790_000_000_000, None
    for n, (name, (lr, frames, top1)) in enumerate(RUNS.items()):
        run_id = client.create_run(exp_id, run_name=name, start_time=start + 600_000 * n).info.run_id
        first = first or run_id
        client.log_batch(
            run_id,
            params=[Param("optim.lr", lr), Param("data.num_frames", frames), Param("name", name), Param("seed", "0")],
        )
        metrics, best = [], 0.0
        for epoch, acc in enumerate(top1, start=1):
            t, best = start + 600_000 * n + 100_000 * epoch, max(best, acc)
            metrics += [
                Metric("val/top1", acc, t, 10 * epoch),
                Metric("epoch", epoch, t, 10 * epoch),
                Metric("best/val/top1", best, t, 10 * epoch),
            ]
        client.log_batch(run_id, metrics=metrics)
        client.set_terminated(run_id, "FINISHED", end_time=start + 600_000 * n + 100_000 * len(top1))
    evaluation = "lr1e-3_f8 test step_00000030"
    child = client.create_run(
        exp_id,
        run_name=evaluation,
        start_time=start + 2_000_000,
        tags={PARENT_TAG: first, EVALUATED_TAG: "/runs/lr1e-3_f8/checkpoints/step_00000030"},
    )
    client.log_batch(child.info.run_id, metrics=[Metric("test/top1", 0.6, start + 2_000_000, 30)])
    client.set_terminated(child.info.run_id, "FINISHED", end_time=start + 2_010_000)
    return evaluation
