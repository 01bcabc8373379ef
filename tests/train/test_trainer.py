"""Training: model folders, checkpoint/resume equivalence, rollback on divergence."""

from __future__ import annotations

import pytest
import torch

from denseloc.config import Config
from denseloc.errors import DenselocError
from denseloc.train import trainer as trainer_module
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import Trainer


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
    with pytest.raises(DenselocError, match="another configuration"):
        Trainer(cfg, tmp_path / "m", device="cpu").fit(epochs=2, resume=True)


def test_nan_loss_rolls_back_with_a_lower_learning_rate(tmp_path, monkeypatch) -> None:
    real_loss = trainer_module.gmm_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        parts = real_loss(*args, **kwargs)
        if torch.is_grad_enabled():  # training steps only, not validation
            calls["n"] += 1
            if calls["n"] == 5:  # the second step of the second epoch
                parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(trainer_module, "gmm_loss", flaky_loss)
    trainer = Trainer(tiny_config(), tmp_path / "m", device="cpu")
    trainer.fit(epochs=2)
    assert trainer.state.rollbacks == 1
    assert trainer.state.lr_factor == 0.5
    assert trainer.state.epoch == 2
    assert trainer.state.step == 6  # the failed epoch was redone from its checkpoint
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())
