"""How the smoothing along z of a bead calibration sets the PSF's z information.

Usage: python benchmarks/bench_psf_smoothing.py [--lengths NM ...] [--rois N]

Calibrates ../shared/data/beads_epfl2016/beads_as.tif (z step 10 nm, 100 nm pixels, the EMCCD
defaults) with the smoothing along z chosen by leaving each bead out (``auto``), and fits the
spline again to the same registered average smoothed by each fixed length given (default
60 nm, the fixed default before 2026-12-03, which smoothed over 7 planes, and 550 nm). Per PSF:

- the left-out beads' error of its smoothing, relative to no smoothing's (the calibration's
  cross-validation; the smallest is the length chosen);

- the Cramer-Rao bound in z of an emitter of 2,000 photons on 100 background photons/px at the
  centre of a pixel, on a 2 nm grid over -600..600 nm: its median, and its roughness, the RMS
  of log(bound) about its own 100 nm running mean. A real PSF changes smoothly with z; a rough
  bound comes from calibration noise, and promises z information no fit can use;
- the maximum-likelihood fitter on isolated emitters simulated from that same PSF (2,000
  photons, 100 background photons/px, z uniform in 200 nm bins), scored as in
  ``bench_mle.py``: RMS(error / sqrt(CRLB)) per axis (1 = efficient), failed fits (> 1.5 px).

Writes ``psf_smoothing`` (markdown + JSON) under benchmarks/results/, with every candidate
length's error in the notes. About 3 minutes.
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from _common import write_results
from bench_mle import ACCURACY_THREADS, BEADS, BG_PHOTONS, PIXEL_SIZE_NM, Case, crlb_cell
from denseloc.calibration.beads import _smooth_z, _z_window, calibrate_beads
from denseloc.calibration.spline import CubicSplinePSF
from denseloc.config import CameraConfig
from denseloc.errors import DenselocWarning
from denseloc.evaluate.crlb import NoiseModel, crlb

PHOTONS = 2000.0
Z_GRID_NM = (-600.0, 600.0, 2.0)
RUNNING_MEAN_NM = 100.0
Z_EDGES_NM = tuple(range(-600, 601, 200))
ROI_PX = 15
Z_STEP_NM = 10.0


def bound_profile(psf) -> dict[str, float]:
    """Median and roughness of the z bound over the grid (emitter at a pixel's centre)."""
    z = torch.arange(*Z_GRID_NM, dtype=torch.float64)
    n = z.numel()
    zero = torch.zeros(n, dtype=torch.float64)
    bound = crlb(
        psf, z, torch.full((n,), PHOTONS, dtype=torch.float64), zero + BG_PHOTONS,
        dx_px=zero, dy_px=zero, noise=NoiseModel.from_camera(CameraConfig()), size=ROI_PX,
    )[:, 2].numpy()  # fmt: skip
    log_bound = np.log(bound)
    window = round(RUNNING_MEAN_NM / Z_GRID_NM[2]) + 1
    inner = slice(window // 2, -(window // 2))
    wiggle = (log_bound - uniform_filter1d(log_bound, window))[inner]
    return {
        "crlb_z_median_nm": float(np.median(bound)),
        "crlb_z_roughness": float(np.sqrt(np.mean(wiggle**2))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=float, nargs="*", default=[60.0, 550.0],
                        help="fixed smoothing lengths (nm) to compare with the chosen one")
    parser.add_argument("--rois", type=int, default=600, help="emitters per z bin")
    args = parser.parse_args()
    torch.set_num_threads(ACCURACY_THREADS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fitted focal depth", DenselocWarning)
        cal = calibrate_beads(BEADS, z_step_nm=Z_STEP_NM, pixel_size_nm=PIXEL_SIZE_NM,
                              camera=CameraConfig())
    psfs = {"auto": (cal.z_smoothing_nm, cal.psf)}
    for length in args.lengths:
        smoothed = _smooth_z(cal.measured, length, Z_STEP_NM)
        psfs[f"{length:g} nm"] = (length, CubicSplinePSF.from_stack(
            smoothed, Z_STEP_NM, cal.reference_slice, pixel_size_nm=PIXEL_SIZE_NM))
    rows = []
    for name, (length, psf) in psfs.items():
        window = _z_window(length, Z_STEP_NM, len(cal.z_nm))
        summary = {
            "smoothing": name,
            "window_planes": window,
            "left_out_error": cal.z_smoothing_scores.get(window * Z_STEP_NM),
            **bound_profile(psf),
        }
        case = Case(name, psf, ROI_PX, None)
        for k, (lo, hi) in enumerate(itertools.pairwise(Z_EDGES_NM)):
            generator = torch.Generator().manual_seed(100 + k)
            z = lo + (hi - lo) * torch.rand(args.rois, generator=generator, dtype=torch.float64)
            photons = torch.full((args.rois,), PHOTONS, dtype=torch.float64)
            cell = crlb_cell(case, photons, z, seed=200 + k)
            row = {**summary, "z_bin_nm": f"{lo}..{hi}"}
            row.update({key: cell[key] for key in
                        ("failed_pct", "ratio_x", "ratio_y", "ratio_z", "crlb_z_nm")})
            rows.append(row)
            print(row, flush=True)
    candidates = ", ".join(f"{k:g} nm {v:.3f}" for k, v in cal.z_smoothing_scores.items())
    write_results(
        "psf_smoothing",
        rows,
        f"{BEADS.name}, z step 10 nm, EMCCD defaults, {cal.n_beads_used} beads. "
        "window_planes: the Savitzky-Golay window; left_out_error: that window's error in "
        f"predicting left-out beads, relative to no smoothing's (every candidate: {candidates}; "
        "empty: not a candidate). crlb_z_median_nm / crlb_z_roughness: the "
        f"z bound of {PHOTONS:g} photons on {BG_PHOTONS:g} background photons/px at a pixel's "
        f"centre on a {Z_GRID_NM[2]:g} nm grid over {Z_GRID_NM[0]:g}..{Z_GRID_NM[1]:g} nm: "
        f"median, and RMS of log(bound) about its {RUNNING_MEAN_NM:g} nm running mean. "
        f"Per z bin: {args.rois} isolated emitters of {PHOTONS:g} photons simulated from the "
        "row's own PSF and fitted by fit_rois; ratio_* = RMS(error / sqrt(CRLB)) over fits "
        "that did not fail (> 1.5 px), crlb_z_nm the median bound (bench_mle.py's scoring).",
    )


if __name__ == "__main__":
    main()
