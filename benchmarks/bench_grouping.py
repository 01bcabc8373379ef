"""Are the sigmas of grouped localizations calibrated? (``denseloc localize --group``)

Usage: python benchmarks/bench_grouping.py CONFIG.yaml [--model MODEL_DIR] [--frames 300]
       [--name N] [--record]

Grouping merges the localizations of one emitter in consecutive frames into their
inverse-variance weighted mean, whose sigma ``1 / sqrt(sum sigma_i^-2)`` assumes that the
frames' errors are independent. A network that reads neighbouring frames as context sees
the same photons for several of its frames' predictions, so their errors may be correlated,
and the merged sigma too small. This measures it on test movies of bench_training.py (64x64 px;
the config's PSF, camera and photons): every localization is matched to the ground truth
(frame by frame, as `denseloc evaluate`), groups are linked as `--group` links them (50 nm),
and the groups of two or more whose members all matched one emitter are scored:

- ``kept``: the share of the groups of two or more that are scored (the others hold a false
  positive or a localization matched to another emitter);
- ``frame_err_over_sigma``: RMS(error / sigma) of their single-frame localizations;
- ``rho``, ``rho_lag2``: the uncentred correlation ``E[z_t z_t+k] / sqrt(E[z_t^2] E[z_t+k^2])``
  of the normalised errors z = error / sigma of one emitter's localizations k = 1 and 2
  frames apart within these groups (uncentred: a bias shared by the frames counts, as it
  does in their mean);
- ``rho_all``: the same at k = 1 over every emitter matched in two consecutive frames,
  linked or not (:func:`denseloc.evaluate.frame_error_correlation`, as training measures
  it); this is what ``--record`` writes;
- ``grouped_err_over_sigma``: RMS(error / sigma) of the merged localizations against the
  truth (the emitter's position; for photons, the sum over the group's frames); 1 when the
  merged sigmas are right.

The correlations are measured on two movies (seeds 200, 201) and the merged sigmas with
them checked on two others (seeds 210, 211), for each readout. The classical MLE fitter,
which fits each frame alone, is shown for comparison; note that linking within 50 nm selects
pairs of frames whose errors differ little, which correlates even independent errors when
the errors are as large as the MLE's on these movies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from _common import model_on_test_movies_args, write_results
from bench_training import test_movie
from denseloc.classic.mle import localize_mle
from denseloc.evaluate import evaluate, frame_error_correlation
from denseloc.evaluate.crlb import NoiseModel
from denseloc.localize.grouping import group_consecutive, link_consecutive
from denseloc.localize.network import predict_frames
from denseloc.sim.simulator import psf_from_config
from denseloc.train.artifact import TrainedModel

DENSITIES = {"low": 0.1, "medium": 0.5}
RADIUS_NM = 50.0  # denseloc localize --group's default
READOUTS = ("mixture", "max")


AXES = ("x", "y", "z", "photons")


def clean_groups(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """`pred` with columns ``group``, ``id`` (the matched emitter) and its true ``x_nm``,
    ``y_nm``, ``z_nm`` and ``photons`` in that frame (``true_*``), for the rows of groups of
    two or more localizations that all matched the same emitter."""
    _, pairs = evaluate(pred, truth)
    pred = pred.reset_index(drop=True)
    pred = pred.assign(group=link_consecutive(pred, radius_nm=RADIUS_NM), id=-1)
    rows, gt = pairs["pred_index"].to_numpy(), pairs["gt_index"].to_numpy()
    pred.loc[rows, "id"] = truth["id"].to_numpy()[gt]
    for column in ("x_nm", "y_nm", "z_nm", "photons"):
        pred.loc[rows, f"true_{column}"] = truth[column].to_numpy()[gt]
    per_group = pred.groupby("group")["id"].agg(["min", "max", "size"])
    good = per_group[(per_group["min"] >= 0) & (per_group["min"] == per_group["max"])
                     & (per_group["size"] >= 2)].index
    return pred[pred["group"].isin(good)].sort_values(["group", "frame"])


def _column(axis: str) -> str:
    return "photons" if axis == "photons" else f"{axis}_nm"


def _sigma(axis: str) -> str:
    return "sigma_photons" if axis == "photons" else f"sigma_{axis}_nm"


def _uncentred(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a * b) / np.sqrt(np.mean(a**2) * np.mean(b**2)))


def measure(pred: pd.DataFrame, truth: pd.DataFrame,
            correlation: dict[str, float] | None = None) -> list[dict[str, object]]:
    """Scores per axis; `correlation` is passed to the grouping (None: independent frames)."""
    _, pairs = evaluate(pred, truth)
    rho_all = frame_error_correlation(pairs, truth)
    linked = link_consecutive(pred.reset_index(drop=True), radius_nm=RADIUS_NM)
    several = int((np.bincount(linked) >= 2).sum())
    members = clean_groups(pred, truth)
    plain = members.drop(columns=["id", *members.filter(like="true_").columns])
    merged = {g: group_consecutive(m.drop(columns="group"), radius_nm=RADIUS_NM,
                                   error_correlation=correlation or {})
              for g, m in plain.groupby("group")}
    assert all(len(m) == 1 for m in merged.values())  # the same links as in clean_groups
    truth_of_group = members.groupby("group")[
        ["true_x_nm", "true_y_nm", "true_z_nm", "true_photons"]].agg(
        {"true_x_nm": "first", "true_y_nm": "first", "true_z_nm": "first",
         "true_photons": "sum"})  # emitters do not move; a group's photons are the sum
    group = members["group"].to_numpy()
    rows = []
    for axis in AXES:
        col = _column(axis)
        z_score = ((members[col] - members[f"true_{col}"]) / members[_sigma(axis)]).to_numpy()
        rho = {}
        for lag in (1, 2):
            same = group[lag:] == group[:-lag]  # rows are sorted by group, then frame
            rho[lag] = _uncentred(z_score[:-lag][same], z_score[lag:][same])
        grouped = np.array([(m[col].iloc[0] - truth_of_group.loc[g, f"true_{col}"])
                            / m[_sigma(axis)].iloc[0] for g, m in merged.items()])
        rows.append({
            "axis": axis,
            "groups": len(merged),
            "kept": len(merged) / max(several, 1),
            "mean_frames": float(members.groupby("group").size().mean()),
            "frame_err_over_sigma": float(np.sqrt(np.mean(z_score**2))),
            "rho": rho[1],
            "rho_lag2": rho[2],
            "rho_all": rho_all.get(axis),
            "grouped_err_over_sigma": float(np.sqrt(np.mean(grouped**2))),
        })
    return rows


def record(model_dir: Path, correlation: dict[str, dict[str, float]]) -> None:
    """Write `correlation` (per readout) into the model folder's model.yaml (weights
    untouched)."""
    import yaml

    from denseloc._atomic import atomic_path

    path = model_dir / "model.yaml"
    meta = yaml.safe_load(path.read_text())
    meta["frame_error_correlation"] = {
        readout: {axis: round(value, 3) for axis, value in values.items()}
        for readout, values in correlation.items()}
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(meta, sort_keys=False))


def main() -> None:
    args = model_on_test_movies_args(__doc__, "grouping_bundled", frames=300, **{"--record": dict(
        action="store_true", help="write the network's measured correlations (mean over the "
        "movies that measure them) into the model folder as frame_error_correlation")})
    config, model, model_dir = args.config, args.model, args.model_dir
    psf = psf_from_config(config.psf, config.emitters.z_range_nm)
    rows, runs = [], []
    for role, seed in (("measure", 200), ("check", 210)):
        for i, (density, value) in enumerate(DENSITIES.items()):
            cfg, photons, truth = test_movie(config, value, args.frames, seed=seed + i)
            px = cfg.image.pixel_size_nm
            for readout in READOUTS:
                pred = predict_frames(model, photons, pixel_size_nm=px, readout=readout)
                runs.append((role, density, f"network, {readout}", readout, pred, truth))
            if role == "measure":
                pred = localize_mle(photons, psf, pixel_size_nm=px, z_range_nm=(-700.0, 700.0),
                                    noise=NoiseModel.from_camera(cfg.camera))
                runs.append((role, density, "mle", None, pred, truth))
    for role, density, method, _, pred, truth in runs:
        for row in measure(pred, truth):
            rows.append({"movies": role, "density": density, "method": method,
                         "grouping": "independent", **row})
            print(rows[-1], flush=True)
    measured = {readout: {axis: float(np.mean([
        r["rho_all"] for r in rows if r["movies"] == "measure"
        and r["method"] == f"network, {readout}" and r["axis"] == axis])) for axis in AXES}
        for readout in READOUTS}
    if args.record:
        record(model_dir, measured)
    correlation = TrainedModel.load(model_dir).frame_error_correlation or measured
    for role, density, method, readout, pred, truth in runs:
        if readout is not None and role == "check":
            for row in measure(pred, truth, correlation[readout]):
                rows.append({"movies": role, "density": density, "method": method,
                             "grouping": "correlated", **row})
                print(rows[-1], flush=True)
    write_results(args.name, rows,
                  f"Model {model_dir}; {args.frames}-frame test movies; groups linked within "
                  f"{RADIUS_NM:g} nm in consecutive frames, scored when all their "
                  "localizations matched one emitter. movies: measure (seeds 200, 201) or "
                  "check (seeds 210, 211). grouping: independent, sigmas merged as if the "
                  "frames' errors were independent; correlated, with the model's recorded "
                  f"frame_error_correlation {correlation}. Measured correlations (network, "
                  f"mean over the measuring movies): {measured}.",
                  config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
