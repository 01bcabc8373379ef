"""Training: model folders, checkpoint/resume equivalence, rollback on divergence."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.config import Config
from denseloc.errors import DenselocError
from denseloc.train import trainer as trainer_module
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import CHECKPOINT, Trainer


def tiny_config() -> Config:
    return Config.model_validate({
        "image": {"size_px": 16},
        "emitters": {"density_per_um2": 1.0},
        "model": {"filters": 4, "depth": 1},
        "train": {"frame_size_px": 16, "batch_size": 4, "steps_per_epoch": 3,
                  "validation_samples": 8, "warmup_steps": 2, "threads": 1},
    })


class Interrupt(Exception):
    pass


def test_model_folder_loads_and_gives_identical_outputs(tmp_path) -> None:
    model = Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=2)
    for name in ("config.yaml", "model.yaml", "weights.pt", "training_log.csv", "curves.png"):
        assert (tmp_path / "m" / name).is_file(), name
    loaded = TrainedModel.load(tmp_path / "m")
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), model.net(x), rtol=0, atol=0)
    assert loaded.threshold == model.threshold and loaded.scaling == model.scaling
    assert loaded.config == tiny_config()
    assert loaded.summary["epochs"] == 2


def test_the_model_folder_records_the_factors_that_calibrate_its_sigmas(tmp_path) -> None:
    cfg = tiny_config()
    cfg.psf.kind = "astigmatic"
    cfg.emitters.density_per_um2 = 2.0
    cfg.train.steps_per_epoch, cfg.train.validation_samples = 40, 32  # enough to find some
    model = Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    loaded = TrainedModel.load(tmp_path / "m")
    assert loaded.sigma_scale == model.sigma_scale and loaded.readout == model.readout
    assert set(model.sigma_scale) == {"mixture", "max"}
    axes = {"photons", "x", "y", "z"}
    for factors in model.sigma_scale.values():
        assert set(factors) == axes and all(value > 0 for value in factors.values())
    # The mixture's factors are the validation's RMS(error / sigma) at the tuned threshold.
    validation = model.summary["validation"]
    assert validation["jaccard"] > 0.05  # matched pairs to fit on
    for axis in axes - {"photons"}:
        assert model.sigma_scale["mixture"][axis] == pytest.approx(
            validation[f"z_score_rms_{axis}"], rel=1e-3)
    # ... and how its errors correlate across frames, for grouping (values of a barely
    # trained network: only their presence and range are checked here)
    assert loaded.frame_error_correlation == model.frame_error_correlation
    assert set(model.frame_error_correlation) <= {"mixture", "max"}
    assert model.frame_error_correlation
    for values in model.frame_error_correlation.values():
        assert set(values) <= axes and all(0 <= v <= 1 for v in values.values())


@pytest.mark.parametrize(("max_over_mixture", "chosen"), [(0.9, "max"), (0.97, "mixture"),
                                                           (1.2, "mixture")])
def test_the_maximum_pixel_is_the_default_readout_only_when_clearly_better(
    monkeypatch, max_over_mixture, chosen
) -> None:
    import pandas as pd

    from denseloc.evaluate import metrics_from_pairs

    def pairs(*args, readout, **kwargs):
        # One pair whose error is `error` times its CRLB on every axis, and twice its sigma in x.
        error = 2.0 * (max_over_mixture if readout == "max" else 1.0)
        table = pd.DataFrame({**{f"d{axis}_nm": [error] for axis in "xyz"},
                              **{f"crlb_{axis}_nm": [1.0] for axis in "xyz"},
                              "sigma_x_nm": [error / 2]})
        return metrics_from_pairs(table, n_pred=1, n_gt=1), table

    monkeypatch.setattr(trainer_module, "_validation_pairs", pairs)
    data = types.SimpleNamespace(sim=types.SimpleNamespace(psf=types.SimpleNamespace(is_3d=True)))
    readout, factors, errors = trainer_module.fit_readouts(None, None, data, 0.5)
    assert readout == chosen
    assert errors["max"]["crlb_ratio_z"] == pytest.approx(2 * max_over_mixture)
    assert factors["max"] == {"photons": 1.0, "x": 2.0, "y": 1.0, "z": 1.0}  # y, z: no sigma


def test_a_saved_model_keeps_relative_paths_pointing_at_the_same_files(
    tmp_path, monkeypatch
) -> None:
    # A Config built in Python reads "psf.h5" in the working directory; the model folder's
    # config.yaml would read it next to itself unless the path is made absolute.
    import dataclasses

    from denseloc.calibration import resolve_builtin
    from denseloc.cli import DEFAULT_MODEL
    from denseloc.config import PSFConfig, load_config

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    bundled = TrainedModel.load(resolve_builtin(DEFAULT_MODEL))
    config = bundled.config.model_copy(update={"psf": PSFConfig(kind="file", path="psf.h5")})
    dataclasses.replace(bundled, config=config).save(tmp_path / "m")
    saved = load_config(tmp_path / "m" / "config.yaml")
    assert saved.psf.path == (tmp_path / "work" / "psf.h5").resolve()


def test_validation_windows_are_interior_and_each_from_its_own_movie(tmp_path) -> None:
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"edge_windows": 1.0, "frames_per_movie": 16})})
    batches, truth = Trainer(cfg, tmp_path / "m", device="cpu").validation_set()
    assert sum(len(b.windows) for b in batches) == cfg.train.validation_samples
    for batch in batches:
        # Consecutive, unpadded frames, and no frame shared: movies of exactly 3 frames.
        n = len(batch.windows)
        assert torch.equal(batch.windows, 3 * torch.arange(n)[:, None] + torch.arange(3))
        assert len(batch.frames) == 3 * n
    # Every sample is its own scene: no two samples share a fluorophore's position.
    assert not truth.duplicated(["x_nm", "y_nm", "z_nm"]).any()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path) -> None:
    reference = Trainer(tiny_config(), tmp_path / "ref", device="cpu").fit(epochs=2)

    def stop_after_first_epoch(info: dict) -> None:
        if info.get("epoch") == 1 and "jaccard" in info:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(tiny_config(), tmp_path / "run", device="cpu").fit(
            epochs=2, progress=stop_after_first_epoch)
    assert not (tmp_path / "run" / "weights.pt").exists()
    with pytest.raises(DenselocError, match="--resume"):
        Trainer(tiny_config(), tmp_path / "run", device="cpu").fit(epochs=2)
    resumed = Trainer(tiny_config(), tmp_path / "run", device="cpu").fit(epochs=2, resume=True)
    for (name, a), b in zip(reference.net.state_dict().items(),
                            resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_refuses_another_configuration(tmp_path) -> None:
    Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=1)
    cfg = tiny_config()
    cfg.train.lr = 5e-4
    with pytest.raises(DenselocError,
                       match=r"another configuration \(train\.lr was 0\.002 and is now 0\.0005\)"):
        Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=2, resume=True)


def test_resume_accepts_a_checkpoint_from_before_a_new_option(tmp_path) -> None:
    # A checkpoint written before train.z_margin existed holds no such key; its default
    # reproduces that run, so resuming must go on rather than refuse the configuration.
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=1)
    path = tmp_path / "m" / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["train"]["z_margin"]
    torch.save(ckpt, path)
    resumed = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    resumed.fit(epochs=2, resume=True)
    assert resumed.state.epoch == 2
    assert resumed.state.step == 2 * trainer.state.step


def nan_loss_at(monkeypatch, step: int) -> None:
    """Make the training loss NaN at the `step`-th training step (1-based, counting
    training steps only, redone ones included)."""
    real_loss = trainer_module.gmm_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        parts = real_loss(*args, **kwargs)
        if torch.is_grad_enabled():  # training steps only, not validation
            calls["n"] += 1
            if calls["n"] == step:
                parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(trainer_module, "gmm_loss", flaky_loss)


def test_nan_loss_rolls_back_with_a_lower_learning_rate(tmp_path, monkeypatch) -> None:
    nan_loss_at(monkeypatch, 5)  # the second step of the second epoch
    monkeypatch.setattr(trainer_module, "time", FakeClock())
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=2)
    assert trainer.state.rollbacks == 1
    assert trainer.state.lr_factor == 0.5
    assert trainer.state.epoch == 2
    assert trainer.state.step == 6  # the failed epoch was redone from its checkpoint
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())
    # The time of the lost steps stays spent: 8 steps and 2 validations of one second each,
    # epoch 1 (3 + 1), the lost epoch's two steps (the diverging one too), epoch 2 again
    # (3 + 1); the step time is measured over all 8 steps.
    assert trainer.state.elapsed_s == pytest.approx(10.0)
    assert trainer.state.steps_run == 8


def test_a_non_finite_validation_loss_rolls_back_instead_of_saving(tmp_path, monkeypatch):
    real = Trainer.validate
    calls = {"n": 0}

    def validate(self):
        metrics = real(self)
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's weights
            metrics["val_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(Trainer, "validate", validate)
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=2)
    assert trainer.state.rollbacks == 1 and trainer.state.lr_factor == 0.5
    assert trainer.state.epoch == 2 and trainer.state.step == 6  # epoch 2 was trained again
    assert [r["epoch"] for r in trainer.state.history] == [1, 2]


def test_a_rollback_without_its_checkpoint_says_so(tmp_path, monkeypatch) -> None:
    nan_loss_at(monkeypatch, 5)
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    real_save = Trainer.save_checkpoint

    def save_then_lose(self):
        real_save(self)
        if self.state.epoch == 1:
            (self.out_dir / trainer_module.CHECKPOINT).unlink()

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_lose)
    with pytest.raises(DenselocError, match=r"checkpoint\.pt: gone.*cannot roll back"):
        trainer.fit(epochs=2)


def test_training_refuses_a_folder_holding_a_trained_model(tmp_path) -> None:
    out = tmp_path / "m"
    Trainer(tiny_config(), out, device="cpu").fit(epochs=1)
    (out / trainer_module.CHECKPOINT).unlink()  # "safe to delete" once training is over
    with pytest.raises(DenselocError, match="holds a trained model"):
        Trainer(tiny_config(), out, device="cpu").fit(epochs=1)


def test_a_rollback_under_a_time_budget_keeps_the_schedule_within_it(tmp_path, monkeypatch):
    # The schedule is planned after the warm-up (20 steps here, after 6 epochs and
    # validations); a divergence in epoch 9 rolls back to epoch 8 and re-plans the steps that
    # fit in what is left, from the step time over every step run, lost ones included.
    nan_loss_at(monkeypatch, 26)
    monkeypatch.setattr(trainer_module, "time", FakeClock())
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(minutes=1.0)
    state = trainer.state
    assert state.rollbacks == 1 and state.elapsed_s >= 60.0
    # One second per step plus a validation per three steps: 4/3 s per step.
    assert trainer._seconds_per_step() == pytest.approx(4 / 3, rel=0.1)
    assert state.step >= 0.9 * state.planned_steps  # the learning rate decayed by the end
    assert trainer.lr_at(state.step) < 0.1 * tiny_config().train.lr


def stalling_validation(monkeypatch, stalled_epochs: int, lowest_recall: float = 0.0) -> None:
    """Validation finds nothing at threshold 0.5 for the first `stalled_epochs` epochs, and
    `lowest_recall` at the lowest threshold; recall 0.5 at both after (a tiny network after a
    few steps may detect nothing for real)."""
    real_evaluate = trainer_module.evaluate_batches
    validations = {"n": 0}

    def evaluate_batches(outputs, truth, data, threshold, **kwargs):
        metrics = real_evaluate(outputs, truth, data, threshold, **kwargs)
        if threshold == 0.5:  # each validation asks first at 0.5
            validations["n"] += 1
        stalled = validations["n"] <= stalled_epochs
        metrics["recall"] = 0.5 if not stalled else 0.0 if threshold == 0.5 else lowest_recall
        return metrics

    monkeypatch.setattr(trainer_module, "evaluate_batches", evaluate_batches)
    monkeypatch.setattr(trainer_module, "STALL_MIN_STEPS", 3)


def test_a_stalled_run_restarts_from_new_weights(tmp_path, monkeypatch, caplog) -> None:
    stalling_validation(monkeypatch, stalled_epochs=1)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    first = [p.detach().clone() for p in Trainer(config, tmp_path / "x", device="cpu")
             .net.parameters()]
    after_restart = {}
    real_restart = Trainer._restart

    def recording_restart(self, *args):
        real_restart(self, *args)
        after_restart["weights"] = [p.detach().clone() for p in self.net.parameters()]
        after_restart["optimizer"] = dict(self.optimizer.state)

    monkeypatch.setattr(Trainer, "_restart", recording_restart)
    trainer.fit(epochs=3)
    assert trainer.state.restarts == 1
    assert "restarting from new random weights" in caplog.text
    # The two epochs left were trained from the new start (steps count from the restart).
    assert trainer.state.epoch == 3 and trainer.state.step == 6
    assert trainer.state.planned_steps == 6
    start = Trainer(config, tmp_path / "y", device="cpu")
    torch.manual_seed(config.train.seed + 104_729)
    start._fresh_network()
    changed = [not torch.equal(a, b) for a, b in zip(first, start.net.parameters(), strict=True)]
    assert any(changed)  # the restart draws different weights than the first start
    # ... and the run went on from exactly those, with a new optimiser (no Adam moments)
    for got, want in zip(after_restart["weights"], start.net.parameters(), strict=True):
        assert torch.equal(got, want)
    assert after_restart["optimizer"] == {}


def test_a_network_that_detects_only_below_threshold_half_has_not_stalled(
    tmp_path, monkeypatch
) -> None:
    # Its p peaks below 0.5 but above the lowest threshold the tuning tries: a new start would
    # throw away a network that is learning.
    stalling_validation(monkeypatch, stalled_epochs=100, lowest_recall=0.3)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    trainer.fit(epochs=3)
    assert trainer.state.restarts == 0 and trainer.state.step == 9


def test_a_stall_in_the_last_epoch_keeps_the_trained_weights(tmp_path, monkeypatch,
                                                              caplog) -> None:
    # Restarting there would save fresh random weights that never trained.
    stalling_validation(monkeypatch, stalled_epochs=100)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    initial = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.fit(epochs=1)
    assert trainer.state.restarts == 0 and trainer.state.step == config.train.steps_per_epoch
    assert "too little budget is left to restart" in caplog.text
    saved = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    trained = [p.detach() for p in trainer.net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(initial, trained, strict=True))
    for name, tensor in trainer.net.state_dict().items():
        assert torch.equal(saved[name], tensor)


def test_a_stall_with_too_few_steps_left_to_judge_a_new_start_keeps_the_weights(
    tmp_path, monkeypatch
) -> None:
    # Three steps per epoch; a stall is judged after 4 steps: with one epoch left a new start
    # could not be judged before it is saved.
    stalling_validation(monkeypatch, stalled_epochs=100)
    monkeypatch.setattr(trainer_module, "STALL_MIN_STEPS", 4)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    trainer.fit(epochs=3)  # stalls at epochs 2 (6 steps; 3 left) and 3 (none left)
    assert trainer.state.restarts == 0 and trainer.state.step == 9


def test_resuming_a_restarted_run_plans_from_the_restart(tmp_path, monkeypatch, caplog) -> None:
    stalling_validation(monkeypatch, stalled_epochs=1)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    Trainer(config, tmp_path / "m", device="cpu").fit(epochs=3)
    caplog.clear()
    Trainer(config, tmp_path / "m", device="cpu").fit(epochs=3, resume=True)
    assert "keeps that learning-rate schedule" not in caplog.text


def test_a_plan_shorter_than_the_warm_up_still_decays(tmp_path) -> None:
    config = tiny_config()
    config.train.warmup_steps = 200
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    trainer._plan_from_start(10)  # as --epochs plans at step 0
    rates = [trainer.lr_at(step) for step in range(10)]
    assert rates[4] == pytest.approx(config.train.lr)  # warmed up over the first half
    assert all(later < earlier for earlier, later in itertools.pairwise(rates[5:]))
    final = config.train.lr * config.train.lr_final_fraction
    assert trainer.lr_at(10) == pytest.approx(final)  # decayed where the plan ends
    fresh = Trainer(config, tmp_path / "n", device="cpu")
    assert fresh.lr_at(99) == pytest.approx(config.train.lr * 100 / 200)  # not planned yet
    # A plan made from a time budget after the warm-up keeps it: the rate does not jump.
    fresh.state.planned_steps = 250
    assert fresh.lr_at(200) == pytest.approx(fresh.lr_at(199), rel=0.01)


def test_a_run_that_keeps_stalling_ends_with_a_clear_error(tmp_path, monkeypatch) -> None:
    stalling_validation(monkeypatch, stalled_epochs=100)
    config = tiny_config()
    config.train.detection_warmup_steps = 0
    with pytest.raises(trainer_module.TrainingStalled, match="can the emitters"):
        Trainer(config, tmp_path / "m", device="cpu").fit(epochs=10)


@pytest.mark.parametrize(("count_weight", "by_emitters"), [("one", False), ("emitters", True)])
def test_training_and_validation_use_the_configured_count_weight(
    tmp_path, monkeypatch, count_weight, by_emitters
) -> None:
    real_loss = trainer_module.gmm_loss
    seen = []

    def recording_loss(*args, **kwargs):
        seen.append(kwargs["count_by_emitters"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "gmm_loss", recording_loss)
    cfg = tiny_config()
    cfg.train.count_weight = count_weight
    Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    assert len(seen) > cfg.train.steps_per_epoch  # training steps and validation batches
    assert set(seen) == {by_emitters}


@pytest.mark.parametrize("kind", ["gaussian", "astigmatic"])
def test_only_a_3d_model_is_trained_and_read_with_z(tmp_path, monkeypatch, kind) -> None:
    import denseloc.localize.network as network_module
    import denseloc.localize.postprocess as postprocess_module
    from denseloc.localize.network import predict_frames

    seen = {"loss": set(), "training": set(), "localize": set()}

    def recording(name, real):
        def wrapper(*args, **kwargs):
            seen[name].add(kwargs["is_3d"])
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(trainer_module, "gmm_loss", recording("loss", trainer_module.gmm_loss))
    monkeypatch.setattr(postprocess_module, "maps_to_table",  # imported by the trainer on use
                        recording("training", postprocess_module.maps_to_table))
    monkeypatch.setattr(network_module, "maps_to_table",
                        recording("localize", network_module.maps_to_table))
    cfg = tiny_config()
    cfg.psf.kind = kind
    model = Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    predict_frames(TrainedModel.load(tmp_path / "m"), torch.full((3, 16, 16), 100.0),
                   pixel_size_nm=100.0)
    assert seen == {name: {kind != "gaussian"} for name in seen}
    # a 2D model's log and summary have no axial scores, not an RMSE of 0 for its z of 0
    import pandas as pd

    # (the axial efficiency is a number in 3D even when nothing is matched, as after 1 epoch)
    log = pd.read_csv(tmp_path / "m" / "training_log.csv")
    validation = model.summary["validation"]
    if kind == "gaussian":
        assert log["rmse_axial_nm"].isna().all() and log["efficiency_axial"].isna().all()
        assert validation["efficiency_axial"] is None and validation["rmse_axial_nm"] is None
        assert all(s["rmse_axial_nm"] is None
                   for s in model.summary["validation_by_readout"].values())
    else:
        assert log["efficiency_axial"].notna().all()
        assert validation["efficiency_axial"] is not None


def test_a_model_without_background_head_reports_no_background(tmp_path) -> None:
    import numpy as np
    import pandas as pd

    from denseloc.localize.postprocess import maps_to_table

    cfg = tiny_config()
    cfg.model.predict_bg = False
    model = Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    log = pd.read_csv(tmp_path / "m" / "training_log.csv")
    assert np.isfinite(log["val_loss"]).all()  # no background term against a missing head
    with torch.no_grad():
        out = model.net(torch.randn(1, 3, 16, 16))
    out[:, 0] = -10.0  # p logits: one sure detection; the rest of the maps as the net made them
    out[0, 0, 8, 8] = 10.0
    table = maps_to_table(out, model.scaling, pixel_size_nm=100.0, threshold=0.5,
                          is_3d=True)
    assert len(table) == 1
    assert table["bg"].isna().all()  # not 0 photons/px, which would be a false measurement


def test_resuming_with_more_epochs_warns_that_the_schedule_is_kept(tmp_path, caplog) -> None:
    Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=1)
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=2, resume=True)
    assert "keeps that learning-rate schedule" in caplog.text
    assert trainer.state.planned_steps == tiny_config().train.steps_per_epoch  # unchanged
    assert trainer.state.epoch == 2


def test_validation_counts_emitters_relative_to_their_brightness(tmp_path, monkeypatch) -> None:
    seen = []
    for name in ("evaluate_batches", "tune_threshold"):
        real = getattr(trainer_module, name)

        def recording(*args, _real=real, **kwargs):
            seen.append(kwargs["min_photons"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(trainer_module, name, recording)
    cfg = tiny_config()
    cfg.emitters.photons_mean, cfg.emitters.photons_std = 2000.0, 200.0
    cfg.train.min_target_photons = 100.0
    Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    # A fixed 500-photon cut would count the emitters of a 5000-photon simulation only.
    assert len(seen) >= 2 and all(m == pytest.approx(200.0) for m in seen)


def test_validation_never_counts_emitters_the_network_was_taught_to_skip(
    tmp_path, monkeypatch
) -> None:
    seen = []
    real = trainer_module.evaluate_batches

    def recording(*args, **kwargs):
        seen.append(kwargs["min_photons"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_batches", recording)
    cfg = tiny_config()
    cfg.emitters.photons_mean, cfg.emitters.photons_std = 400.0, 50.0
    cfg.train.min_target_photons = 100.0
    Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=1)
    # 10 % of the mean is 40 photons, but training has no targets below 100: counting the
    # emitters between would score correct silence as misses.
    assert seen and all(m == pytest.approx(100.0) for m in seen)


class FakeClock:
    """time.perf_counter for the trainer: one second per call, so a step or a validation
    takes one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_a_time_budget_shorter_than_the_epochs_plans_the_schedule_to_end_in_time(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(trainer_module, "time", FakeClock())
    config = tiny_config()
    trainer = Trainer(config, tmp_path / "m", device="cpu")
    trainer.fit(epochs=100, minutes=1.0)
    tc = config.train
    assert trainer.state.planned_steps < 100 * tc.steps_per_epoch  # the budget ended first
    assert trainer.state.elapsed_s >= 60.0
    # The learning rate decayed: the last step was near the end of the planned schedule.
    assert trainer.state.step >= 0.9 * trainer.state.planned_steps
    assert trainer.lr_at(trainer.state.step) < 0.1 * tc.lr


def test_a_non_finite_gradient_rolls_back_instead_of_stepping(
    tmp_path, monkeypatch, caplog
) -> None:
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def flaky_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls["n"] += 1
        # The last step of epoch 1: a NaN step here would be validated and checkpointed,
        # leaving no good state to roll back to.
        if calls["n"] == 3:
            for p in parameters:
                p.grad.fill_(float("inf"))
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", flaky_clip)
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=2)
    assert "gradient is not finite" in caplog.text
    assert trainer.state.rollbacks == 1
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())


def test_the_log_records_the_gradient_norm_and_how_often_clipping_acted(
    tmp_path, monkeypatch
) -> None:
    real_clip = torch.nn.utils.clip_grad_norm_
    norms = []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        norm = real_clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    config = tiny_config()
    steps = config.train.steps_per_epoch
    # a threshold between the first epoch's norms, so that clipping acts on some steps only
    probe = Trainer(config, tmp_path / "probe", device="cpu")
    probe.fit(epochs=1)
    clip = float(np.median(norms[:steps]))
    settings = config.model_dump()
    settings["train"]["grad_clip"] = clip
    config = Config.model_validate(settings)
    norms.clear()
    Trainer(config, tmp_path / "m", device="cpu").fit(epochs=2)
    log = pd.read_csv(tmp_path / "m" / "training_log.csv")
    assert len(norms) == 2 * steps
    for epoch, row in enumerate(log.itertuples()):
        epoch_norms = np.array(norms[epoch * steps:(epoch + 1) * steps])
        assert row.grad_norm == pytest.approx(np.median(epoch_norms), rel=1e-12)
        assert row.clipped == pytest.approx(np.mean(epoch_norms > clip))
    assert 0 < log["clipped"].iloc[0] < 1


def test_a_log_resumed_from_an_older_version_keeps_every_column(tmp_path) -> None:
    Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=1)
    path = tmp_path / "m" / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    for record in ckpt["state"]["history"]:  # as written before the gradient columns
        del record["grad_norm"], record["clipped"]
    torch.save(ckpt, path)
    Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=2, resume=True)
    log = pd.read_csv(tmp_path / "m" / "training_log.csv")
    assert len(log) == 2
    assert np.isnan(log["grad_norm"].iloc[0]) and np.isfinite(log["grad_norm"].iloc[1])
    assert (tmp_path / "m" / "curves.png").stat().st_size > 0


def test_resume_on_another_device_names_the_one_to_use(tmp_path) -> None:
    Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=1)
    path = tmp_path / "m" / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    ckpt["device"] = "cuda"
    torch.save(ckpt, path)
    with pytest.raises(DenselocError, match="resume with --device cuda"):
        Trainer(tiny_config(), tmp_path / "m", device="cpu").fit(epochs=2, resume=True)


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_steps_follow_the_channels_last_setting(
    tmp_path, monkeypatch, channels_last
) -> None:
    seen = []
    real = trainer_module.DecodeNet.forward_windows

    def recording(self, frames, windows, **kwargs):
        seen.append(kwargs.get("channels_last"))
        return real(self, frames, windows, **kwargs)

    monkeypatch.setattr(trainer_module.DecodeNet, "forward_windows", recording)
    context_layouts = []
    real_from_features = trainer_module.DecodeNet.from_features

    def recording_context(self, features):
        if torch.is_grad_enabled():  # training steps, not validation or inference
            context_layouts.append(features.is_contiguous(memory_format=torch.channels_last))
        return real_from_features(self, features)

    monkeypatch.setattr(trainer_module.DecodeNet, "from_features", recording_context)
    config = tiny_config()
    config.train.channels_last = channels_last
    Trainer(config, tmp_path / "m", device="cpu").fit(epochs=1)
    assert seen and set(seen) == {channels_last}
    # the context U-Net gets the layout asked for in the training steps
    assert context_layouts and set(context_layouts) == {channels_last}


def test_fit_readouts_measures_the_factors_of_a_2d_network_from_its_maps() -> None:
    import numpy as np
    import pandas as pd

    from denseloc.nn.model import Scaling

    # One emitter per 8x8 frame near pixel (4, 4); the maps place it with errors of 0.1 px in
    # x, 0.025 px in y and 150 photons, but predict sigmas of 0.05 px and 50 photons: factors
    # 2, 0.5 and 3, for either readout (one pixel).
    rng = np.random.default_rng(3)
    n, px = 400, 100.0
    true = rng.uniform(-0.4, 0.4, (n, 2))
    out = torch.zeros(n, 10, 8, 8, dtype=torch.float64)
    out[:, 0] = -30.0
    out[:, 5:9] = 0.05
    out[:, 0, 4, 4] = 3.0  # p = 0.95
    out[:, 1, 4, 4] = torch.from_numpy(0.5 + rng.normal(0, 0.15, n))  # 500 photons, +- 150
    out[:, 2, 4, 4] = torch.from_numpy(true[:, 0] + rng.normal(0, 0.1, n))
    out[:, 3, 4, 4] = torch.from_numpy(true[:, 1] + rng.normal(0, 0.025, n))
    truth = pd.DataFrame({"frame": np.arange(n), "x_nm": (4.5 + true[:, 0]) * px,
                          "y_nm": (4.5 + true[:, 1]) * px, "z_nm": 0.0, "photons": 500.0,
                          "crlb_x_nm": 10.0, "crlb_y_nm": 10.0})
    data = types.SimpleNamespace(
        scaling=Scaling(input_offset=0.0, input_scale=1.0, photons=1000.0, z_nm=500.0,
                        bg_photons=10.0),
        config=types.SimpleNamespace(image=types.SimpleNamespace(pixel_size_nm=px)),
        sim=types.SimpleNamespace(psf=types.SimpleNamespace(is_3d=False)),
    )
    readout, factors, errors = trainer_module.fit_readouts(out, truth, data, 0.5)
    assert readout == "mixture"  # the two readouts are equally good here
    for name in ("mixture", "max"):
        assert set(factors[name]) == {"photons", "x", "y"}  # no z for a 2D PSF
        for axis, factor in (("photons", 3.0), ("x", 2.0), ("y", 0.5)):
            # RMS(e / sigma) has a relative standard error of 1 / sqrt(2 n).
            assert factors[name][axis] == pytest.approx(factor, rel=4 / np.sqrt(2 * n))
        assert errors[name]["crlb_ratio_x"] == pytest.approx(1.0, rel=4 / np.sqrt(2 * n))


def test_a_target_floor_above_every_emitter_is_refused_before_training(tmp_path) -> None:
    config = tiny_config()
    config.emitters.photons_mean, config.emitters.photons_std = 400.0, 50.0
    config.train.min_target_photons = 600.0
    with pytest.raises(DenselocError, match=r"train\.min_target_photons \(600\) is above"):
        Trainer(config, tmp_path / "m", device="cpu")
    assert not (tmp_path / "m").exists()
