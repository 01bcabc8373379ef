"""A trained model is a folder: configuration, weights, tuned threshold, training record.

Layout::

    MODEL_DIR/
      config.yaml        simulation, camera, PSF, architecture and training settings
      model.yaml         architecture, network units (scaling), detection threshold, summary,
                         SHA-256 of the files config.yaml names (sCMOS maps, PSF calibration),
                         the default readout and, per readout, the factors that calibrate
                         the predicted sigmas
      weights.pt         state dict of the network
      training_log.csv   one row per epoch (written by the trainer)
      curves.png         training curves
      checkpoint.pt      the last epoch's full training state, for ``--resume`` (the trainer
                         writes it; not needed to use the model, and safe to delete)

Load it with :meth:`TrainedModel.load`; only files the package wrote are read.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import yaml

from denseloc import __version__
from denseloc._atomic import atomic_path
from denseloc.config import Config, changed_inputs, file_sha256, load_config
from denseloc.errors import InputFileError
from denseloc.localize.postprocess import SIGMA_AXES, Readout
from denseloc.nn.model import DecodeNet, Scaling

__all__ = ["MODEL_FORMAT", "TrainedModel"]

MODEL_FORMAT = "denseloc-model/1"


@dataclass
class TrainedModel:
    """A network with everything needed to apply it to data."""

    net: DecodeNet
    scaling: Scaling
    config: Config
    threshold: float = 0.5
    summary: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    """SHA-256 of the files the configuration reads (sCMOS maps, PSF calibration) as they
    were when training started; see :meth:`changed_inputs`."""
    readout: Readout = "mixture"
    """How detections are read from the output maps unless the caller says otherwise, chosen
    on validation data by :meth:`~denseloc.train.trainer.Trainer.finish`."""
    sigma_scale: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per readout (``mixture``, ``max``), the factors by axis (``photons``, ``x``, ``y``,
    ``z``) that calibrate the predicted sigmas, fitted on validation data by
    :meth:`~denseloc.train.trainer.Trainer.finish`; empty (factors 1) for older models."""
    frame_error_correlation: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per readout, the correlation of the errors / sigma of one emitter's localizations in
    consecutive frames, by axis (``x``, ``y``, ``z``, ``photons``), for grouping
    (:func:`~denseloc.localize.grouping.group_consecutive`); measured on simulated movies at
    the end of training (:meth:`~denseloc.train.trainer.Trainer.measure_frame_correlation`)
    or by ``benchmarks/bench_grouping.py --record``; empty in models saved before."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.yaml, model.yaml and weights.pt into `directory`.

        model.yaml comes last and records the digest of weights.pt, so that a folder whose save
        was interrupted while overwriting an older model is refused on loading rather than
        read as new weights with the old threshold, scaling and sigma factors.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "weights.pt") as tmp:
            torch.save({k: v.cpu() for k, v in self.net.state_dict().items()}, tmp)
        with atomic_path(directory / "config.yaml") as tmp:
            # Paths relative to the working directory would be read against the folder.
            tmp.write_text(self.config.resolve_paths(Path.cwd()).to_yaml())
        meta = {
            "format": MODEL_FORMAT,
            "software_version": __version__,
            "architecture": self.net.config(),
            "scaling": self.scaling.to_dict(),
            "threshold": float(self.threshold),
            "summary": self.summary,
            "inputs": self.inputs,
            "readout": self.readout,
            "sigma_scale": self.sigma_scale,
            "frame_error_correlation": self.frame_error_correlation,
            "files": {name: file_sha256(directory / name) for name in _DIGESTED},
        }
        with atomic_path(directory / "model.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> TrainedModel:
        """Load a model folder written by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / "model.yaml"
        if not directory.is_dir():
            raise InputFileError(directory, "model folder not found")
        if not meta_path.is_file():
            raise InputFileError(directory, "not a denseloc model folder (no model.yaml)")
        try:
            meta = yaml.safe_load(meta_path.read_text())
        except yaml.YAMLError:
            raise InputFileError(meta_path, "corrupt model.yaml") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise InputFileError(meta_path, f"unknown model format (expected {MODEL_FORMAT})")
        recorded = meta.get("files") or {}  # absent in folders saved before the digests
        for name in _DIGESTED:
            path = directory / name
            if name in recorded and path.is_file() and file_sha256(path) != recorded[name]:
                raise InputFileError(path, "differs from the file model.yaml was saved with "
                                     "(an interrupted save, or a file copied in from another "
                                     "model); save or copy the whole folder again")
        config = load_config(directory / "config.yaml")
        try:
            net = DecodeNet(**meta["architecture"])
            scaling = Scaling(**meta["scaling"])
            threshold = float(meta["threshold"])
            sigma_scale = _sigma_scale(meta.get("sigma_scale") or {})
            readout = meta.get("readout", "mixture")
            if readout not in get_args(Readout):
                raise ValueError(f"unknown readout {readout!r}")
            correlation = _correlation(meta.get("frame_error_correlation") or {}, readout)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputFileError(meta_path, f"incomplete or damaged ({exc!r})") from None
        try:
            state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except FileNotFoundError:
            raise InputFileError(directory / "weights.pt", "no such file") from None
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as exc:
            raise InputFileError(directory / "weights.pt", f"cannot be loaded ({exc})") from None
        net.to(device).eval()
        return cls(
            net=net, scaling=scaling, config=config, threshold=threshold,
            summary=meta.get("summary") or {}, inputs=meta.get("inputs") or {},
            readout=readout, sigma_scale=sigma_scale, frame_error_correlation=correlation,
        )

    def changed_inputs(self, config: Config | None = None, prefix: str = "") -> list[str]:
        """Messages for files missing or differing from those the model was trained with.

        `config` names the files in use (default: the model's own); with `prefix`
        (``"camera."``) only those fields are read. See :func:`denseloc.config.changed_inputs`.
        """
        return changed_inputs(config or self.config, self.inputs, prefix)


_DIGESTED = ("weights.pt",)
"""Files of a model folder whose digests model.yaml records (config.yaml is left out: its
paths may be edited by hand when a model moves to another machine)."""


def _correlation(raw: dict, default_readout: str) -> dict[str, dict[str, float]]:
    """model.yaml's frame error correlations, checked: in [0, 1], for known readouts and
    axes; a mapping by axis alone (as first recorded) is the default readout's."""
    if raw and all(not isinstance(v, dict) for v in raw.values()):
        raw = {default_readout: raw}
    return _per_readout(raw, "frame_error_correlation", lambda value: 0 <= value <= 1)


def _sigma_scale(raw: dict) -> dict[str, dict[str, float]]:
    """model.yaml's sigma factors, checked: finite and positive, for known axes."""
    return _per_readout(raw, "sigma_scale", lambda value: 0 < value < math.inf)


def _per_readout(
    raw: dict, name: str, valid: Callable[[float], bool]
) -> dict[str, dict[str, float]]:
    """A model.yaml mapping readout -> axis -> number, checked: known readouts and axes,
    numbers (not booleans) for which `valid` holds."""
    out = {}
    for readout, values in raw.items():
        if readout not in get_args(Readout) or not isinstance(values, dict):
            raise ValueError(f"{name} for unknown readout {readout!r}")
        out[readout] = {}
        for axis, value in values.items():
            if (axis not in SIGMA_AXES or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not valid(value)):
                raise ValueError(f"{name}.{readout}.{axis} = {value!r}")
            out[readout][axis] = float(value)
    return out
