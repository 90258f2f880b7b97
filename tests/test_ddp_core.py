"""One real 2-process DDP launch (``tests/scripts/ddp_core.py``), several checks:

- ``on_nonfinite="skip"`` with a NaN on one rank only: both ranks skip the step, stay identical,
  and end where a run without that step's samples ends;
- a task with no labelled sample on one rank does not stop DDP, and the update is the average
  of the ranks' gradients (a plain-PyTorch replay);
- the weight trajectory is written once, by rank 0, into the logger's folder;
- ``on_nonfinite="raise"`` with a NaN on one rank only: both ranks stop together, naming the step
  (also where only one rank's solver sees it, ``ddp="local"``);
- a negative loss on one rank only (FAMO needs losses >= 0): both ranks raise the same error;
- a layer made trainable after DDP wrapped the model is warned about (rank 0);
- DWA checkpointed in the middle of an epoch keeps the running sums and the training metrics of every process.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lightning_multiloss import LossWeightingCallback, ResumableDataLoader
from lightning_multiloss.weighting import create_weighting
from tests._ddp import run_ddp_script
from tests._models import ToyDataset, ToyNet, assert_params_close, quiet_trainer
from tests.scripts.ddp_core import BATCH, SKIP_BATCH, EpochSums, N, WithMask


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp_core")
    return out, run_ddp_script("ddp_core.py", out)


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float, what: str) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=f"{what}: {key} differs")


@pytest.mark.slow
def test_skip_nonfinite_on_one_rank(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    _, (rank0, rank1) = ranks
    skip0, skip1 = rank0["skip"], rank1["skip"]
    # Both ranks went through all 6 batches and agree on the step count (the skipped step counts).
    assert skip0["global_step"] == skip1["global_step"] == 6
    assert_same_params(skip0["params"], skip1["params"], 0.0, "skip run, rank 0 vs rank 1")

    # The skipped step left no trace: the same as a run whose data lacks that step's samples.
    for rank in (rank0, rank1):
        assert_same_params(rank["skip"]["params"], rank["reference"]["params"], 1e-6, "skip vs reference")
        want_opt, got_opt = rank["reference"]["optimizer"], rank["skip"]["optimizer"]
        assert set(got_opt) == set(want_opt)
        for index, state in want_opt.items():
            assert float(state["step"]) == 5.0  # Adam stepped 5 times, not 6
            for name, value in state.items():
                torch.testing.assert_close(got_opt[index][name], value, rtol=0, atol=1e-6)
    # The trajectory has no record for the skipped step; the others are the reference's.
    skipped = SKIP_BATCH + 1
    assert skip0["steps"] == [s for s in range(1, 7) if s != skipped]
    torch.testing.assert_close(
        torch.tensor(skip0["weights"]), torch.tensor(rank0["reference"]["weights"]), rtol=0, atol=1e-6
    )
    # Each rank says the skip once, naming the task: rank 1 its value, rank 0 (which learns of it
    # through the all-reduce) where it was.
    where = f"at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}"
    said = {
        rank: [m for m in messages if m.startswith("on_nonfinite='skip': skipping")]
        for rank, messages in ((0, rank0["messages"]), (1, rank1["messages"]))
    }
    assert said[1] == [
        f"on_nonfinite='skip': skipping the optimizer step of non-finite task loss(es) {{'reg': nan}} {where}"
    ]
    assert said[0] == [
        "on_nonfinite='skip': skipping the optimizer step of non-finite task loss(es) "
        f"{{'reg': 'non-finite on another process'}} {where}"
    ]


def _replay_masked(lr: float = 0.2) -> dict[str, torch.Tensor]:
    """DDP by hand: each rank's loss on its own batch (reg only on labelled samples, 0 if none);
    the update uses the mean of the two ranks' gradients."""
    model = ToyNet(lr=lr)  # the script's initial weights (same seed)
    trunk, heads = copy.deepcopy(model.trunk), copy.deepcopy(model.heads)
    params = [*trunk.parameters(), *heads.parameters()]
    data = WithMask()
    for j in range(N // (2 * BATCH)):
        grads = []
        for r in (0, 1):
            idx = [16 * j + r + 2 * i for i in range(BATCH)]
            x = torch.stack([data[i]["x"] for i in idx])
            cls = torch.stack([data[i]["cls"] for i in idx])
            reg = torch.stack([data[i]["reg"] for i in idx])
            mask = torch.stack([data[i]["reg_mask"] for i in idx])
            z = trunk(x)
            loss = 0.5 * F.cross_entropy(heads["cls"](z), cls)
            if mask.any():
                loss = loss + 0.3 * F.mse_loss(heads["reg"](z)[mask], reg[mask])
            grads.append(torch.autograd.grad(loss, params, allow_unused=True))
        with torch.no_grad():
            for p, g0, g1 in zip(params, *grads, strict=True):
                g0 = torch.zeros_like(p) if g0 is None else g0
                g1 = torch.zeros_like(p) if g1 is None else g1
                p -= lr * (g0 + g1) / 2
    state = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    state.update({f"heads.{k}": v for k, v in heads.state_dict().items()})
    return state


@pytest.mark.slow
def test_task_without_labels_on_one_rank(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    _, (rank0, rank1) = ranks
    masked0, masked1 = rank0["masked"], rank1["masked"]
    assert masked0["global_step"] == masked1["global_step"] == N // (2 * BATCH)
    assert_same_params(masked0["params"], masked1["params"], 0.0, "masked run, rank 0 vs rank 1")
    assert_same_params(masked0["params"], _replay_masked(), 1e-6, "masked run vs replay")


@pytest.mark.slow
def test_trajectory_written_once_by_rank_zero(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    out, (rank0, rank1) = ranks
    log_dir = Path(rank0["skip"]["log_dir"])
    assert rank1["skip"]["log_dir"] == str(log_dir)
    assert log_dir.parent == out / "skip"
    assert sorted(p.relative_to(out) for p in (out / "skip").rglob("loss_weights.*")) == [
        log_dir.relative_to(out) / "loss_weights.csv",
        log_dir.relative_to(out) / "loss_weights.png",
    ]
    with open(log_dir / "loss_weights.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:-1]  # the last row: the weights in force at the end
    assert [int(r["step"]) for r in rows] == rank0["skip"]["steps"]
    written = torch.tensor([[float(r["cls"]), float(r["reg"])] for r in rows])
    torch.testing.assert_close(written, torch.tensor(rank0["skip"]["weights"]), rtol=0, atol=1e-7)
    # one message per fit on rank 0 (four fits before the messages are taken), none on rank 1
    assert sum("trajectory written" in m for m in rank0["messages"]) == 4
    assert not any("trajectory written" in m for m in rank1["messages"])


@pytest.mark.slow
@pytest.mark.parametrize("run", ["raise", "raise_local"])
def test_a_nonfinite_loss_on_one_rank_stops_both_naming_the_step(
    ranks: tuple[Path, list[dict[str, Any]]], run: str
) -> None:
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        error = rank[run]["error"]
        assert error is not None, "training went on past a NaN"
        # Rank 1 saw the NaN; rank 0 learns of it through the all-reduce. Both name step 2.
        assert f"at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}" in error
        assert rank[run]["global_step"] == 6  # found at the epoch's end, no step waited for it
    assert "{'reg': nan}" in rank1[run]["error"]
    assert "{'reg': 'non-finite on another process'}" in rank0[run]["error"]


@pytest.mark.slow
def test_in_local_mode_a_nonfinite_weight_on_one_rank_stops_both_naming_the_step(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        error = rank["weights_local"]["error"]
        assert error is not None, "training went on past an infinite weight"
        assert error.startswith("weighting 'test-infinite-on-rank1' gave non-finite weight(s) "), error
        assert f"at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}, from the task losses" in error
        assert rank["weights_local"]["global_step"] == 6  # found at the epoch's end, no step waited for it
    assert "'reg': nan" in rank1["weights_local"]["error"]
    assert "'reg': 'non-finite on another process'" in rank0["weights_local"]["error"]
    # Skip mode does not skip a strategy's failure: both stop at once, at that step.
    own = rank1["weights_local_skip"]["error"]
    assert own.startswith("weighting 'test-infinite-on-rank1' gave non-finite weight(s) [1.0, inf] from the Gramian ")
    assert own.endswith(f", at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}")
    assert rank0["weights_local_skip"]["error"] == (
        "weighting 'test-infinite-on-rank1' gave non-finite weights on another process, "
        f"at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}"
    )
    assert rank0["weights_local_skip"]["global_step"] == rank1["weights_local_skip"]["global_step"] == SKIP_BATCH


@pytest.mark.slow
def test_a_folder_rank_zero_cannot_make_stops_both_ranks_before_training(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        error = rank["folder_refused"]["error"]
        assert error is not None and error.startswith("LossWeightingCallback: cannot make the folder "), error
        assert error.endswith("a_file/run' for loss_weights.csv and loss_weights.png: a part of it is a file"), error
        assert rank["folder_refused"]["global_step"] == 0


@pytest.mark.slow
def test_in_local_mode_a_solver_failure_on_one_rank_skips_the_step_on_both(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (rank0, rank1) = ranks
    assert rank0["skip_local"]["global_step"] == rank1["skip_local"]["global_step"] == 6
    # The network's parameters (the weights are each process's own in local mode).
    network = [
        {k: v for k, v in r["skip_local"]["params"].items() if not k.startswith("weighting.")} for r in (rank0, rank1)
    ]
    assert_same_params(network[0], network[1], 0.0, "skip_local")
    assert all(torch.isfinite(v).all() for v in network[0].values())
    for state in rank0["skip_local"]["optimizer"].values():
        assert float(state["step"]) == 5.0  # Adam stepped 5 times: the first step was skipped


@pytest.mark.slow
def test_a_nonfinite_validation_loss_on_one_rank_stops_both(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    _, (rank0, rank1) = ranks
    assert "non-finite task loss(es) {'reg': nan} at val" in rank1["val_raise"]["error"]
    assert rank0["val_raise"]["error"] == (
        "non-finite task loss(es) at val on another process (evaluation is not skipped: a NaN there comes from "
        "the model's outputs or the batch's targets)"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "stopped_at"), [("raise", 6), ("skip", SKIP_BATCH)])
def test_a_negative_loss_on_one_rank_stops_both_with_the_same_error(
    ranks: tuple[Path, list[dict[str, Any]]], mode: str, stopped_at: int
) -> None:
    # Rank 0 raised NonFiniteLossError ("non-finite or negative on another process", advising the skip
    # option that does not skip such steps) while rank 1 raised the negative-loss error.
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        result = rank[f"negative_{mode}"]
        assert result["error"] is not None, "training went on past a negative loss"
        assert result["type"] == "MultiLossError"
        assert (
            f"at train step {SKIP_BATCH}, epoch 0, batch {SKIP_BATCH}: weighting 'famo' needs losses >= 0"
            in (result["error"])
        )
        assert result["global_step"] == stopped_at  # raise: at the epoch's end; skip: at once
    assert "{'reg': -4" in rank1[f"negative_{mode}"]["error"]
    assert "{'reg': 'negative on another process'}" in rank0[f"negative_{mode}"]["error"]


@pytest.mark.slow
def test_a_layer_made_trainable_after_ddp_wrapped_the_model_is_warned_about(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    # DDP never averages its gradients (its reducer lists the parameters when it starts): the
    # processes drift apart silently. Rank 0 says so when the shared parameters are found again.
    _, (rank0, rank1) = ranks
    said = [m for m in rank0["messages"] if "parameters became trainable after DDP wrapped the model" in m]
    assert len(said) == 1 and "freeze with a learning rate of 0 instead" in said[0]
    assert not any("became trainable after DDP" in m for m in rank1["messages"])


@pytest.mark.slow
def test_a_checkpoint_keeps_the_epoch_sums_of_every_process(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    # The running sums of the epoch's losses are each process's own; the checkpoint held rank 0's
    # alone and every process took them back, so DWA's epoch mean counted rank 0's batches twice
    # and rank 1's not at all.
    _, (rank0, rank1) = ranks

    def sums(rank: dict[str, Any], run: str) -> torch.Tensor:
        return torch.tensor(rank[run]["sums"], dtype=torch.float64)

    saved = sums(rank0, "dwa_saved") + sums(rank1, "dwa_saved")
    assert bool((sums(rank0, "dwa_saved") != sums(rank1, "dwa_saved")).all())
    stored = torch.load(rank0["dwa_saved"]["checkpoint"], weights_only=True)["state_dict"]
    torch.testing.assert_close(stored["weighting.epoch_losses.total"], saved)
    torch.testing.assert_close(stored["_mt_train_means.total"], saved)  # those of train/loss/<task>_epoch
    torch.testing.assert_close(sums(rank0, "dwa_resumed") + sums(rank1, "dwa_resumed"), saved)


@pytest.mark.slow
def test_a_run_resumed_in_the_middle_of_an_epoch_ends_as_the_uninterrupted_one(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    # The loaders (ResumableDataLoader) skip the batches each process trained on before the checkpoint.
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        want, got = rank["dwa_saved"]["state"], rank["dwa_resumed"]["state"]
        assert int(got["weighting.epochs_seen"]) == 2
        assert_params_close(got, want, atol=1e-6, what="after resume")
        # The tasks' training metrics of the resumed epoch are over all of it, on every process (the
        # checkpoint holds their states over both processes, which rank 0 alone takes back).
        full, resumed = rank["dwa_saved"]["metrics"], rank["dwa_resumed"]["metrics"]
        assert sorted(full) == [0, 1] and sorted(resumed) == [0, 1]
        assert full[0] != full[1]
        for epoch in (0, 1):
            assert resumed[epoch] == pytest.approx(full[epoch], rel=1e-6), epoch


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("ignore:.*resumed with another number of processes")
def test_a_checkpoint_of_two_processes_resumes_in_one_with_the_epochs_means(
    ranks: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    # The epoch sums are over each process's batches, two per step under DDP: resumed in one process,
    # the batches before the checkpoint weighed twice those after it (train/loss/cls_epoch 1.061 for
    # 1.047 in the report), and DWA's weights followed.
    _, (rank0, _) = ranks

    def one_process(checkpoint: str | None) -> tuple[ToyNet, dict[int, list[float]]]:
        values = EpochSums()
        callbacks = [LossWeightingCallback(plot=False), values]
        trainer = quiet_trainer(max_epochs=2, precision="64-true", callbacks=callbacks, default_root_dir=tmp_path)
        model = ToyNet(create_weighting("dwa"), metrics=True, train_metrics=True)
        # The global batches of the two processes' (batch j of rank r holds samples 16 j + r + 2 i).
        trainer.fit(model, ResumableDataLoader(ToyDataset(N), batch_size=2 * BATCH), ckpt_path=checkpoint)
        return model, values.metrics

    full, full_values = one_process(None)
    resumed, resumed_values = one_process(rank0["dwa_saved"]["checkpoint"])
    assert sorted(resumed_values) == [0, 1]
    for epoch in (0, 1):
        assert resumed_values[epoch] == pytest.approx(full_values[epoch], rel=1e-6), epoch
    assert_params_close(resumed.state_dict(), full.state_dict(), atol=1e-6, what="resumed in one process")


@pytest.mark.slow
def test_in_local_mode_each_process_resumes_its_own_solver_state(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    _, (rank0, rank1) = ranks
    # The processes' GradVac targets differ (each solves with its own Gramian): a resume that gave
    # every process rank 0's would not end as the uninterrupted run.
    assert not torch.equal(
        rank0["gradvac_full"]["state"]["weighting.target"], rank1["gradvac_full"]["state"]["weighting.target"]
    )
    for rank in (rank0, rank1):
        want, got = rank["gradvac_full"]["state"], rank["gradvac_resumed"]["state"]
        assert_params_close(got, want, atol=1e-6, what="GradVac, local mode, after resume")


@pytest.mark.slow
def test_a_resume_from_an_epochs_last_batch_ends_that_epoch_on_every_process(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    # Resumed at the next epoch, the Callback ends the epoch the checkpoint was written in: rank 1
    # (its sums zeroed, rank 0 holding the total) asked whether any batch was seen and skipped the
    # collective that rank 0 entered (a hang); in float64 its zeroed sums were float32 again.
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        want, got = rank["dwa_saved"]["state"], rank["dwa_resumed_at_epoch_end"]["state"]
        assert int(got["weighting.epochs_seen"]) == int(want["weighting.epochs_seen"]) == 2
        assert want["weighting.last_means"].dtype == torch.float64
        # Lightning loads a checkpoint into the module before converting it to float64: the resumed
        # parameters went through float32 once.
        assert_params_close(got, want, atol=1e-6, what="after resume")
