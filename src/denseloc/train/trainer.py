"""Training from on-the-fly simulation, with validation, checkpoints, resume and rollback.

One epoch is ``train.steps_per_epoch`` AdamW steps on freshly simulated batches, followed
by a validation on a fixed-seed set scored with the project's own metrics. After every epoch
a checkpoint is written atomically, so an interrupted run (even ``kill -9``) resumes losing at
most one epoch. A step whose loss is not finite, or explodes far above its recent level,
rolls the run back to the last checkpoint with half the learning rate instead of ending it.
A run that has stalled, whose network still detects nothing on the validation set once the
detection warm-up is over, not even at the lowest threshold the tuning tries (it can stay with
p uniform over the frame, a plateau of the mixture loss), restarts from new random weights on
the remaining budget.

The learning rate warms up linearly, then follows a cosine decay to
``lr * lr_final_fraction`` over the planned number of steps. With a time budget the plan is
fixed after the warm-up from the measured speed.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import pandas as pd
import torch

from denseloc._atomic import atomic_path
from denseloc._runtime import configure_cpu, select_device
from denseloc.config import Config, config_differences, input_digests
from denseloc.errors import DenselocError
from denseloc.localize.postprocess import SIGMA_AXES, Readout
from denseloc.nn.loss import detection_bce, gmm_loss
from denseloc.nn.model import DecodeNet
from denseloc.train.artifact import TrainedModel
from denseloc.train.data import Batch, TrainingData

if TYPE_CHECKING:
    from denseloc.evaluate import Metrics

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "TrainingStalled",
    "evaluate_batches",
    "fit_readouts",
    "tune_threshold",
]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG = "training_log.csv"
MAX_ROLLBACKS = 6
MAX_RESTARTS = 2
STALL_MIN_STEPS = 500  # a network that detects nothing this early may just be slow
COUNTED_FRACTION = 0.1
"""Validation counts emitters with at least this fraction of the mean brightness in the frame
(500 photons for the benchmarks' 5000): blinks on for a sliver of the frame are optional."""
EXPLOSION_FACTOR = 20.0
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.1, 0.95, 0.05), 2))
"""The detection thresholds :func:`tune_threshold` tries."""
MAX_READOUT_GAIN = 0.95
"""The maximum-pixel readout becomes a model's default when its validation errors (relative to
the CRLB) are below this fraction of the mixture's; see :func:`fit_readouts`."""


class TrainingDiverged(DenselocError):
    """Training kept diverging after repeated rollbacks."""


class TrainingStalled(DenselocError):
    """Training kept detecting nothing after repeated restarts."""


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    planned_steps: int | None = None
    lr_factor: float = 1.0
    rollbacks: int = 0
    restarts: int = 0
    elapsed_s: float = 0.0
    steps_run: int = 0  # every step taken, lost or not: elapsed_s / steps_run is the step time
    samples: int = 0
    loss_ema: float | None = None  # the explosion test's baseline, kept across a rollback
    # Warm-up steps when a plan made at step 0 was too short for the configured warm-up
    # (None: train.warmup_steps); a plan made later, from the time budget, keeps it.
    warmup_steps: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _validation_truth(batches: list[Batch], data: TrainingData) -> pd.DataFrame:
    """Ground truth of validation batches with frame = global sample index and the CRLB.

    Each emitter's ``bg`` is the background at its own pixel (a structured background varies
    across the crop). The bounds take the chip's read noise (an sCMOS variance map's median):
    `data.config` is the crops' camera without its maps, whose ``read_noise_e`` the simulator
    ignored.
    """
    from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns
    from denseloc.sim.simulator import background_at

    px = data.config.image.pixel_size_nm
    tables, offset = [], 0
    for batch in batches:
        table = batch.emitters.to_table(px)
        table["bg"] = background_at(batch.bg * data.scaling.bg_photons, table, px)
        table["frame"] += offset
        tables.append(table)
        offset += len(batch.windows)
    truth = pd.concat(tables, ignore_index=True)
    frame_shape = tuple(batches[0].frames.shape[-2:]) if batches else None
    return add_crlb_columns(truth, data.config, frame_shape=frame_shape,
                            noise=NoiseModel.from_camera(data.chip_camera.config))


@torch.no_grad()
def predict_batches(net: DecodeNet, batches: list[Batch], channels_last: bool) -> torch.Tensor:
    """Network outputs (N, 10, H, W) for a list of batches (evaluation mode)."""
    was_training = net.training
    net.eval()
    outs = []
    for batch in batches:
        outs.append(net(batch.inputs, channels_last=channels_last).float())
    net.train(was_training)
    return torch.cat(outs)


def _validation_pairs(
    outputs: torch.Tensor,
    truth: pd.DataFrame,
    data: TrainingData,
    threshold: float,
    *,
    min_photons: float | None = None,
    readout: Readout = "mixture",
) -> tuple[Metrics, pd.DataFrame]:
    """Metrics and matched pairs of network outputs against the validation truth."""
    from denseloc.evaluate import evaluate
    from denseloc.localize.postprocess import maps_to_table

    pred = maps_to_table(outputs, data.scaling, pixel_size_nm=data.config.image.pixel_size_nm,
                         threshold=threshold, readout=readout, is_3d=data.sim.psf.is_3d)
    return evaluate(pred, truth, min_photons=min_photons, is_3d=data.sim.psf.is_3d)


def evaluate_batches(
    outputs: torch.Tensor,
    truth: pd.DataFrame,
    data: TrainingData,
    threshold: float,
    *,
    min_photons: float | None = None,
) -> dict[str, Any]:
    """Metrics (as a dict) of network outputs against the validation truth."""
    metrics, _ = _validation_pairs(outputs, truth, data, threshold, min_photons=min_photons)
    return metrics.to_dict()


def fit_readouts(
    outputs: torch.Tensor,
    truth: pd.DataFrame,
    data: TrainingData,
    threshold: float,
    *,
    min_photons: float | None = None,
) -> tuple[Readout, dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """The readout to use by default and, per readout, the factors that calibrate its sigmas.

    Both come from the matched, counted validation emitters. Each factor is RMS(error /
    predicted sigma) (:func:`denseloc.evaluate.sigma_scale`; z only for a 3D PSF). The default
    is the mixture, the distribution the loss trains, unless the maximum pixel's errors are
    clearly smaller: its mean over the axes of RMS(error / sqrt(CRLB)) below
    :data:`MAX_READOUT_GAIN` times the mixture's. (A 2D network trained for 3-9 emitters/um^2
    has lateral errors a sixth smaller read at its maximum pixel; for the bundled one, trained
    for 0.05-2.5, the two are level, and at 0.1 /um^2 the maximum pixel's z errors are larger.)

    Returns
    -------
    readout : {"mixture", "max"}
        The default.
    factors : dict
        Per readout, the factor of each axis.
    errors : dict
        Per readout, the validation's RMSE and RMS(error / sqrt(CRLB)) per axis.
    """
    from denseloc.evaluate import sigma_scale

    axes = SIGMA_AXES if data.sim.psf.is_3d else tuple(a for a in SIGMA_AXES if a != "z")
    factors, errors, scores = {}, {}, {}
    for readout in get_args(Readout):
        metrics, pairs = _validation_pairs(outputs, truth, data, threshold,
                                           min_photons=min_photons, readout=readout)
        factors[readout] = {axis: _four_digits(value)
                            for axis, value in sigma_scale(pairs, axes).items()}
        errors[readout] = {name: getattr(metrics, name) for name in _READOUT_ERRORS}
        ratios = [getattr(metrics, f"crlb_ratio_{axis}") for axis in axes if axis != "photons"]
        scores[readout] = math.inf if None in ratios else float(np.mean(ratios))
    default = "max" if scores["max"] < MAX_READOUT_GAIN * scores["mixture"] else "mixture"
    return default, factors, errors


def _four_digits(value: float) -> float:
    """`value` to 4 significant digits for model.yaml; never 0 or infinite if it was not."""
    rounded = float(f"{value:.4g}")
    return rounded if math.isfinite(rounded) else value


def tune_threshold(
    outputs: torch.Tensor, truth: pd.DataFrame, data: TrainingData, min_photons: float
) -> tuple[float, dict[str, Any]]:
    """The detection threshold that maximises the Jaccard index on validation data."""
    best = (0.5, {"jaccard": -1.0})
    for threshold in THRESHOLDS:
        metrics = evaluate_batches(outputs, truth, data, threshold, min_photons=min_photons)
        if metrics["jaccard"] > best[1]["jaccard"]:
            best = (threshold, metrics)
    return best


class Trainer:
    """Train a :class:`~denseloc.nn.model.DecodeNet` for a configuration.

    Parameters
    ----------
    config : Config
        Simulation, model and training settings.
    out_dir : path
        Model folder; holds the checkpoint and the log while training.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, config: Config, out_dir: str | Path, device: str = "auto") -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = select_device(device)
        tc, em = config.train, config.emitters
        if tc.min_target_photons > em.photons_mean + 3 * em.photons_std:
            raise DenselocError(
                f"train.min_target_photons ({tc.min_target_photons:g}) is above the brightness "
                f"of nearly every emitter (emitters.photons_mean {em.photons_mean:g}, "
                f"photons_std {em.photons_std:g}): the network would have nothing to learn"
            )
        if self.device.type == "cpu":
            configure_cpu(tc.threads)
        self.channels_last = tc.channels_last and self.device.type == "cpu"
        torch.manual_seed(tc.seed)
        self.inputs = input_digests(config)  # before the files are read for training
        self.data = TrainingData(config, self.device)
        self.val_data = self.data
        self._fresh_network()
        self.generator = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.state = _State()
        self._validation: tuple[list[Batch], pd.DataFrame] | None = None

    def _fresh_network(self) -> None:
        """New random weights (from torch's global generator) and a new optimiser."""
        self.net = DecodeNet(**self.config.model.model_dump()).to(self.device)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=self.config.train.lr,
            weight_decay=self.config.train.weight_decay,
        )

    # -- schedule ---------------------------------------------------------------------------
    def _warmup(self) -> int:
        """Warm-up steps: ``train.warmup_steps``, or half a shorter plan made at step 0."""
        fixed = self.state.warmup_steps
        return self.config.train.warmup_steps if fixed is None else fixed

    def _plan_from_start(self, planned: int) -> None:
        """Fix the plan at step 0, warming up over at most its first half, so that the rate
        has decayed when it ends."""
        self.state.planned_steps = planned
        self.state.warmup_steps = min(self.config.train.warmup_steps, planned // 2)

    def lr_at(self, step: int) -> float:
        """Learning rate at `step` (warm-up, then cosine decay over the planned steps)."""
        tc = self.config.train
        peak = tc.lr * self.state.lr_factor
        planned = self.state.planned_steps
        warmup = self._warmup()
        if step < warmup:
            return peak * (step + 1) / warmup
        if planned is None:
            return peak
        span = max(planned - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return peak * (tc.lr_final_fraction + (1 - tc.lr_final_fraction) * 0.5 * (
            1 + math.cos(math.pi * progress)))

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write model, optimiser, generator and progress atomically."""
        state = {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "state": self.state.__dict__,
            "config": self.config.model_dump(mode="json"),
            "inputs": self.inputs,
            "device": self.device.type,
        }
        with atomic_path(self.out_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint; False if there is none."""
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            return False
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise DenselocError(f"{path}: checkpoint cannot be read ({exc})") from None
        # Validating fills in options added since the checkpoint was written with their
        # defaults, so a newer denseloc resumes an older run of the same configuration.
        try:
            saved = Config.model_validate(ckpt["config"]).model_dump(mode="json")
        except ValueError:
            saved = None
        current = self.config.model_dump(mode="json")
        if saved != current:
            changed = config_differences(saved, current) if saved is not None else []
            detail = f" ({'; '.join(changed[:3])})" if changed else ""
            raise DenselocError(
                f"{path}: checkpoint was written for another configuration{detail}; "
                "use the same CONFIG.yaml to resume, or another --out"
            )
        if "inputs" not in ckpt and self.inputs:
            logger.warning("%s predates input digests: cannot check that %s are the files the "
                           "run started with", path, ", ".join(self.inputs))
        changed = [name for name, digest in ckpt.get("inputs", {}).items()
                   if self.inputs.get(name) != digest]
        if changed:
            raise DenselocError(
                f"{path}: the contents of {', '.join(changed)} differ from those the run "
                "was trained with; restore the files to resume, or train anew with another --out"
            )
        saved_device = ckpt.get("device", self.device.type)
        if saved_device != self.device.type:
            raise DenselocError(
                f"{path}: the run was trained on {saved_device} and its random state cannot "
                f"continue on {self.device.type}; resume with --device {saved_device}"
            )
        self.net.load_state_dict(ckpt["net"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["generator"].cpu())
        self.state = _State(**ckpt["state"])
        return True

    # -- validation -------------------------------------------------------------------------
    def validation_set(self) -> tuple[list[Batch], pd.DataFrame]:
        """Fixed-seed validation batches and their truth (with CRLB), made once."""
        if self._validation is None:
            tc = self.config.train
            gen = torch.Generator(device=self.device).manual_seed(10_000 + tc.seed)
            sizes = [tc.batch_size] * (tc.validation_samples // tc.batch_size)
            if tc.validation_samples % tc.batch_size:
                sizes.append(tc.validation_samples % tc.batch_size)
            # Real movies have 2-4 edge frames in thousands: validate on interior windows.
            # One window per movie: every sample is a scene of its own (windows of one movie
            # share fluorophores), whatever the training's frames_per_movie.
            movie = self.val_data.context
            batches = [self.val_data.batch(n, gen, edge_windows=0.0, frames_per_movie=movie)
                       for n in sizes]
            self._validation = (batches, _validation_truth(batches, self.val_data))
        return self._validation

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss and metrics at threshold 0.5.

        When nothing is found at 0.5, also ``recall_lowest_threshold``, the recall at the
        lowest threshold the tuning tries: a network that detects there has not stalled.
        """
        batches, truth = self.validation_set()
        outputs = predict_batches(self.net, batches, self.channels_last)
        losses, sizes = [], []
        offset = 0
        for batch in batches:
            n = len(batch.windows)
            losses.append(float(self._loss(outputs[offset:offset + n], batch)))
            sizes.append(n)
            offset += n
        metrics = evaluate_batches(outputs, truth, self.val_data, 0.5,
                                   min_photons=self._counted_photons)
        if not metrics["recall"]:
            metrics["recall_lowest_threshold"] = evaluate_batches(
                outputs, truth, self.val_data, THRESHOLDS[0], min_photons=self._counted_photons
            )["recall"]
        metrics["val_loss"] = float(np.average(losses, weights=sizes))  # per sample
        return metrics

    @property
    def _counted_photons(self) -> float:
        """Photons below which a validation emitter is optional (see COUNTED_FRACTION)."""
        # Never below the training targets' floor: the network learns not to report those.
        return max(COUNTED_FRACTION * self.config.emitters.photons_mean,
                   self.config.train.min_target_photons)

    # -- training ---------------------------------------------------------------------------
    def _loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The mixture loss of `output` against `batch`'s targets, as configured."""
        tc = self.config.train
        bg = batch.bg if self.config.model.predict_bg else None
        return gmm_loss(
            output, batch.targets, batch.mask, bg,
            bg_weight=tc.bg_weight, count_by_emitters=tc.count_weight == "emitters",
            is_3d=self.data.sim.psf.is_3d,
        ).total

    def _step(self, batch: Batch) -> tuple[float, float]:
        tc = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.state.step)
        output = self.net.forward_windows(batch.frames, batch.windows,
                                          channels_last=self.channels_last)
        loss = self._loss(output, batch)
        aux_weight = 1.0 - self.state.step / tc.detection_warmup_steps if (
            self.state.step < tc.detection_warmup_steps) else 0.0
        if aux_weight > 0:
            loss = loss + aux_weight * detection_bce(output, batch.targets, batch.mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip))
        value = float(loss.detach())
        # A non-finite norm makes the clipped gradients NaN even when the loss is finite.
        if math.isfinite(value) and math.isfinite(grad_norm):
            self.optimizer.step()
        return value, grad_norm

    def _rollback(self, reason: str, budget_s: float | None) -> None:
        self.state.rollbacks += 1
        if self.state.rollbacks > MAX_ROLLBACKS:
            raise TrainingDiverged(
                f"training diverged {self.state.rollbacks} times, the last time at epoch "
                f"{self.state.epoch} ({reason}), each time rolled back with half the learning "
                "rate; lower train.lr or train.grad_clip"
            )
        factor = self.state.lr_factor * 0.5
        rollbacks = self.state.rollbacks
        # The time spent on the lost steps stays spent: the budget is wall time.
        elapsed, steps_run = self.state.elapsed_s, self.state.steps_run
        if not self.load_checkpoint():  # fit writes one before the first step
            raise DenselocError(
                f"{self.out_dir / CHECKPOINT}: gone (deleted while training?); training "
                f"diverged ({reason}) and cannot roll back"
            )
        self.state.lr_factor = factor
        self.state.rollbacks = rollbacks
        self.state.elapsed_s, self.state.steps_run = elapsed, steps_run
        if budget_s is not None and self.state.planned_steps is not None:
            self.state.planned_steps = min(
                self.state.planned_steps,
                self.state.step
                + max(self._steps_in_budget(budget_s, self._seconds_per_step()), 1),
            )
        # Draw different batches than the ones that diverged.
        self.generator.manual_seed(self.config.train.seed + 1 + 7919 * rollbacks)
        logger.warning("%s: rolled back to epoch %d, learning rate x%.3g",
                       reason, self.state.epoch, factor)

    def _restart(self, reason: str, epochs: int | None, budget_s: float | None) -> None:
        """Start again from new random weights on what is left of the epochs or the budget."""
        state, tc = self.state, self.config.train
        state.restarts += 1
        if state.restarts > MAX_RESTARTS:
            raise TrainingStalled(
                f"training stalled {MAX_RESTARTS + 1} times ({reason}); can the emitters of "
                "this configuration be seen at all? Check photons, background and the PSF, "
                "or try another train.seed"
            )
        seed = tc.seed + 104_729 * state.restarts
        torch.manual_seed(seed)
        self._fresh_network()
        self.generator.manual_seed(seed + 1)
        self._plan_from_start(max(self._steps_left(epochs, budget_s), 1))
        state.step, state.lr_factor, state.loss_ema = 0, 1.0, None
        logger.warning("%s: restarting from new random weights (seed %d, restart %d of %d)",
                       reason, seed, state.restarts, MAX_RESTARTS)

    def fit(
        self,
        *,
        epochs: int | None = None,
        minutes: float | None = None,
        resume: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainedModel:
        """Train for `epochs` epochs or `minutes` minutes (whichever ends first).

        Parameters
        ----------
        epochs : int, optional
            Number of epochs (total, counting epochs before a resume).
        minutes : float, optional
            Training time budget (total wall time of training steps and validations). After
            an interruption, `resume` continues from the last epoch's checkpoint; the time
            spent on the lost part of an epoch is not counted.
        resume : bool
            Continue from the checkpoint in the model folder.
        progress : callable(dict), optional
            Called after every step with ``step, planned_steps, epoch, loss, lr`` and after
            every epoch with the validation metrics too.

        Returns
        -------
        TrainedModel
            The final network with the detection threshold tuned on the validation set, also
            saved in the model folder.
        """
        if epochs is None and minutes is None:
            raise ValueError("give epochs or minutes")
        tc = self.config.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.load_checkpoint():
                raise DenselocError(f"{self.out_dir}: no checkpoint to resume from")
            logger.info("resumed at epoch %d, step %d", self.state.epoch, self.state.step)
            state = self.state
            planned = state.planned_steps
            if epochs is not None and planned is not None and (
                (epochs - state.epoch) * tc.steps_per_epoch > planned - state.step
            ):
                logger.warning(
                    "the resumed run planned %d steps (%d epochs) and keeps that learning-rate "
                    "schedule: the steps after it train at the final rate; for a longer "
                    "schedule, train anew", planned, planned // tc.steps_per_epoch,
                )
        elif (self.out_dir / CHECKPOINT).exists():
            raise DenselocError(
                f"{self.out_dir}: holds a checkpoint; pass --resume to continue it, "
                "or choose another --out"
            )
        elif any((self.out_dir / name).exists() for name in ("model.yaml", "weights.pt")):
            raise DenselocError(
                f"{self.out_dir}: holds a trained model; choose another --out (or delete it)"
            )
        budget_s = None if minutes is None else minutes * 60.0
        if epochs is not None and budget_s is None and self.state.planned_steps is None:
            self._plan_from_start(epochs * tc.steps_per_epoch)
        self.validation_set()
        if not resume:
            self.save_checkpoint()  # epoch 0: the rollback target before the first epoch
        while self._budget_left(epochs, budget_s):
            epoch_start = time.perf_counter()
            losses: list[float] = []
            grad_norms: list[float] = []
            diverged = False
            for _ in range(tc.steps_per_epoch):
                t0 = time.perf_counter()
                batch = self.data.batch(tc.batch_size, self.generator)
                loss, grad_norm = self._step(batch)
                self.state.steps_run += 1
                self.state.elapsed_s += time.perf_counter() - t0
                loss_ema = self.state.loss_ema
                exploded = loss_ema is not None and self.state.step > self._warmup() and (
                    loss > loss_ema + EXPLOSION_FACTOR * max(abs(loss_ema), 1.0))
                if not math.isfinite(loss) or not math.isfinite(grad_norm) or exploded:
                    self._rollback("loss is not finite" if not math.isfinite(loss)
                                   else "gradient is not finite" if not math.isfinite(grad_norm)
                                   else f"loss exploded to {loss:.3g}", budget_s)
                    diverged = True
                    break
                self.state.loss_ema = loss if loss_ema is None else 0.98 * loss_ema + 0.02 * loss
                losses.append(loss)
                grad_norms.append(grad_norm)
                self.state.step += 1
                self.state.samples += tc.batch_size
                self._plan(budget_s, epochs)
                if progress is not None:
                    progress({"step": self.state.step, "planned_steps": self.state.planned_steps,
                              "epoch": self.state.epoch, "loss": loss, "grad_norm": grad_norm,
                              "lr": self.lr_at(self.state.step)})
                if budget_s is not None and self.state.elapsed_s >= budget_s:
                    break
            if diverged:
                continue
            t0 = time.perf_counter()
            metrics = self.validate()
            self.state.elapsed_s += time.perf_counter() - t0
            if not math.isfinite(metrics["val_loss"]):  # never checkpoint such weights
                self._rollback("validation loss is not finite", budget_s)
                continue
            self.state.epoch += 1
            record = {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "samples": self.state.samples,
                "minutes": self.state.elapsed_s / 60,
                "lr": self.lr_at(self.state.step),
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                # the gradient's norm before clipping, and how often clipping acted
                "grad_norm": float(np.median(grad_norms)) if grad_norms else float("nan"),
                "clipped": float(np.mean(np.array(grad_norms) > tc.grad_clip))
                if grad_norms else float("nan"),
                "epoch_s": time.perf_counter() - epoch_start,
                **{k: metrics.get(k) for k in _LOGGED},
            }
            self.state.history.append(record)
            detects_nothing = not (metrics.get("recall")
                                   or metrics.get("recall_lowest_threshold"))
            if detects_nothing and self.state.step >= self._stall_steps():
                reason = f"no detections on the validation set after {self.state.step} steps"
                if self._steps_left(epochs, budget_s) >= self._stall_steps():
                    self._restart(reason, epochs, budget_s)
                else:  # a new start could not even be judged: keep what was trained
                    logger.warning("%s, and too little budget is left to restart: the model "
                                   "keeps these weights; train longer or check that the "
                                   "emitters can be seen", reason)
            self.save_checkpoint()
            self._write_log()
            if progress is not None:
                progress({**record, "planned_steps": self.state.planned_steps})
        return self.finish()

    def _budget_left(self, epochs: int | None, budget_s: float | None) -> bool:
        """Whether the run goes on: epochs and time are left."""
        return not ((epochs is not None and self.state.epoch >= epochs)
                    or (budget_s is not None and self.state.elapsed_s >= budget_s))

    def _steps_left(self, epochs: int | None, budget_s: float | None) -> int:
        """Steps the run has left, by its epochs and its time budget."""
        tc, state = self.config.train, self.state
        left = []
        if epochs is not None:
            left.append(max(epochs - state.epoch, 0) * tc.steps_per_epoch)
        if budget_s is not None:
            left.append(self._steps_in_budget(budget_s, self._seconds_per_step()))
        return min(left)

    def _stall_steps(self) -> int:
        """Steps after which a network that still detects nothing counts as stalled."""
        return max(self.config.train.detection_warmup_steps, STALL_MIN_STEPS)

    def _plan(self, budget_s: float | None, epochs: int | None) -> None:
        """With a time budget, fix the planned steps once the warm-up has been timed.

        With `epochs` too, the plan is whichever ends first, so that the learning rate has
        decayed when the run stops.
        """
        state, tc = self.state, self.config.train
        if budget_s is None or state.planned_steps is not None:
            return
        if state.step >= max(tc.warmup_steps, 20):
            planned = state.step + self._steps_in_budget(budget_s, self._seconds_per_step())
            if epochs is not None:
                planned = min(planned, epochs * tc.steps_per_epoch)
            state.planned_steps = max(planned, state.step + 1)

    def _seconds_per_step(self) -> float:
        """Wall time per step so far, validations and lost steps included."""
        # steps_run is 0 in checkpoints written before it existed: count the steps then.
        return self.state.elapsed_s / max(self.state.steps_run, self.state.step, 1)

    def _steps_in_budget(self, budget_s: float, per_step: float) -> int:
        """Steps that fit in what is left of the time budget, with a margin for validations."""
        return int(0.95 * max(budget_s - self.state.elapsed_s, 0.0) / per_step)

    def _write_log(self) -> None:
        rows = self.state.history
        with atomic_path(self.out_dir / LOG) as tmp, tmp.open("w", newline="") as fh:
            # rows from a checkpoint of an older version may lack the newer columns
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        from denseloc.train.curves import plot_training_curves

        plot_training_curves(rows, self.out_dir / "curves.png")

    def finish(self) -> TrainedModel:
        """Tune the detection threshold, fit the sigma factors and save the model folder.

        Both come from the validation set: the threshold that maximises its Jaccard index,
        then, at that threshold, the default readout and the sigma factors of
        :func:`fit_readouts`. The frame error correlations for grouping come from short
        simulated movies (:meth:`measure_frame_correlation`). The summary's ``validation``
        metrics are those at the tuned threshold, read from the mixture with the sigmas as
        predicted;
        ``validation_by_readout`` holds each readout's errors.
        """
        batches, truth = self.validation_set()
        outputs = predict_batches(self.net, batches, self.channels_last)
        threshold, metrics = tune_threshold(outputs, truth, self.val_data,
                                            min_photons=self._counted_photons)
        readout, sigma_scale, errors = fit_readouts(outputs, truth, self.val_data, threshold,
                                                    min_photons=self._counted_photons)
        net = DecodeNet(**self.config.model.model_dump())
        net.load_state_dict({k: v.cpu() for k, v in self.net.state_dict().items()})
        model = TrainedModel(
            net=net.eval(),
            scaling=self.data.scaling,
            config=self.config,
            threshold=threshold,
            inputs=self.inputs,
            readout=readout,
            sigma_scale=sigma_scale,
            summary={
                "epochs": self.state.epoch,
                "steps": self.state.step,
                "samples": self.state.samples,
                "minutes": round(self.state.elapsed_s / 60, 2),
                "device": str(self.device),
                "validation": {k: metrics[k] for k in _LOGGED if k in metrics},  # tuned threshold
                "validation_by_readout": errors,
            },
        )
        model.frame_error_correlation = self.measure_frame_correlation(model)
        model.save(self.out_dir)
        return model

    def measure_frame_correlation(
        self, model: TrainedModel, n_movies: int = 16, n_frames: int = 20
    ) -> dict[str, dict[str, float]]:
        """Per readout, how `model`'s errors in consecutive frames correlate (for grouping).

        Measured on every interior frame of `n_movies` fixed-seed training-like movies of
        `n_frames` frames (validation frame size, the training densities), at the model's
        threshold: :func:`denseloc.evaluate.frame_error_correlation` over every emitter
        matched in two consecutive frames. One batched pass of the network.
        """
        from denseloc.evaluate import frame_error_correlation

        per_movie = max(n_frames, self.val_data.context) - self.val_data.context + 1
        generator = torch.Generator(device=self.device).manual_seed(
            30_000 + self.config.train.seed)
        batch = self.val_data.batch(n_movies * per_movie, generator, edge_windows=0.0,
                                    frames_per_movie=n_frames)
        # sample k of a movie is its frame k: consecutive samples are consecutive frames,
        # and emitter ids differ between movies
        truth = batch.emitters.to_table(self.val_data.config.image.pixel_size_nm)
        outputs = predict_batches(model.net.to(self.device), [batch], self.channels_last)
        model.net.cpu()
        out = {}
        for readout in model.sigma_scale or {model.readout: None}:
            _, pairs = _validation_pairs(outputs, truth, self.val_data, model.threshold,
                                         readout=readout)
            out[readout] = frame_error_correlation(pairs, truth)
        return {readout: values for readout, values in out.items() if values}


_READOUT_ERRORS = (
    "rmse_lateral_nm", "rmse_axial_nm", "crlb_ratio_x", "crlb_ratio_y", "crlb_ratio_z",
)  # fmt: skip
_LOGGED = (
    "val_loss", "jaccard", "precision", "recall", "rmse_lateral_nm", "rmse_axial_nm",
    "efficiency_lateral", "efficiency_axial", "crlb_ratio_x", "crlb_ratio_y", "crlb_ratio_z",
    "z_score_rms_x", "z_score_rms_y", "z_score_rms_z",
)  # fmt: skip
