"""Classical MLE fitter: efficiency against the CRLB, Jaccard versus density, speed.

Usage: python benchmarks/bench_mle.py [--quick] [--psf PATH] [--seconds S]

Writes four tables under benchmarks/results/ (markdown + JSON):

``mle_crlb_photons``, ``mle_crlb_z``
    Isolated emitters: ROIs rendered with the PSF (emitter uniform within +-0.5 px of the
    central pixel's centre), plus 100 background photons/px, through the EMCCD of the EPFL
    2016 challenge (``CameraConfig()`` defaults), converted back to photons and fitted with
    :func:`denseloc.classic.mle.fit_rois`. Per emitter, the error is divided by its own
    Cramer-Rao bound (its photons, sub-pixel position, z, background, the camera's excess
    noise, the fitted ROI size); reported are RMS(error / sqrt(CRLB)) per axis (1 for an
    efficient estimator), the mean error (bias), the fraction of failed fits (non-finite, or
    more than 1.5 px from the truth: the rule by which ``localize_mle`` drops a fit) and of
    gross outliers (> 5 bounds off in some axis; kept in the RMS). Swept over photons
    (500 to 20,000, z uniform in [-700, 700] nm) and over z (100 nm bins from -700 to 700 nm,
    2,000 photons), for (a) the 2D Gaussian (sigma 1 px, 11 px ROIs), (b) the astigmatic
    Gaussian (configuration defaults, 15 px ROIs), (c) a cubic-spline PSF calibrated from
    ../shared/data/beads_epfl2016/beads_as.tif (15 px ROIs), or the PSF file given by
    ``--psf``. (c) is skipped, with a note, when neither is available.
``mle_density``
    Jaccard, recall, precision, RMSE lateral/axial and the CRLB ratio of matched emitters of
    ``localize_mle`` on simulated 64x64 px movies (EMCCD, photons Normal(5000, 1000),
    background 100 photons/px) at 0.1 to 5 emitters/um^2, for the astigmatic Gaussian and
    the spline; ground truth with fewer than 500 photons in a frame is optional
    (``min_photons=500``); tolerances 250 nm lateral, 500 nm axial.
``mle_speed``
    ROI fits per second with 2 torch threads (and with 1) on batches of 3,000 ROIs: Gaussian
    11 px, astigmatic and spline 15 px (3D fits try three starting z values). The accuracy
    parts run on 1 thread (their results do not depend on it).
``--quick`` runs tiny sizes (a smoke test of about 20 s) and writes ``mle_quick_*`` tables
instead. The full run takes about 3-4 minutes on an idle 2-core machine, most of it in the
spline fits. ``--seconds`` is the timing duration per speed case (at least one batch is
timed). Other work on the machine slows the 1-thread accuracy parts only in proportion, but
can stall 2 torch threads completely; such a thread count is reported as ``stalled``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from _common import write_results
from denseloc.classic.mle import FitResult, fit_rois, localize_mle, psf_width_px
from denseloc.config import CameraConfig, Config, PSFConfig
from denseloc.errors import DenselocError
from denseloc.evaluate import evaluate
from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns, crlb
from denseloc.sim.camera import Camera
from denseloc.sim.psf import PSF
from denseloc.sim.simulator import Simulator, psf_from_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEADS = DATA / "beads_epfl2016" / "beads_as.tif"

PIXEL_SIZE_NM = 100.0
BG_PHOTONS = 100.0
PHOTONS = (500, 1000, 2000, 5000, 10000, 20000)
Z_EDGES_NM = tuple(range(-700, 701, 100))
Z_SWEEP_PHOTONS = 2000.0
Z_RANGE_NM = (-700.0, 700.0)
DENSITIES = (0.1, 0.5, 1.0, 2.0, 5.0)
MIN_PHOTONS = 500.0
FAIL_PX = 1.5
# Accuracy parts run on 1 torch thread: their results do not depend on it, and with other
# work on a 2-core machine two threads stalled (minutes instead of seconds). Speed: 2 and 1.
ACCURACY_THREADS = 1
SPEED_THREADS = (2, 1)
OUTLIER_BOUNDS = 5.0


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    rois_2d: int
    rois_3d: int
    photons: tuple[int, ...]
    z_edges_nm: tuple[int, ...]
    density_frames: int
    speed_rois: int


FULL = Sizes(2000, 800, PHOTONS, Z_EDGES_NM, 20, 3000)
QUICK = Sizes(200, 100, (1000, 10000), (-700, 0, 700), 2, 200)


@dataclass(frozen=True)
class Case:
    """A PSF under test, its ROI size and (for the density movies) its configuration."""

    name: str
    psf: PSF
    roi_px: int
    config: PSFConfig | None


# ------------------------------------------------------------------ isolated emitters vs CRLB


def simulate_rois(
    psf: PSF,
    roi_px: int,
    photons: torch.Tensor,
    z_nm: torch.Tensor,
    camera: Camera,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROIs (N, S, S) in photons after the camera, and the true offsets (dx, dy) in px."""
    n = photons.numel()
    dx = torch.rand(n, generator=generator, dtype=torch.float64) - 0.5
    dy = torch.rand(n, generator=generator, dtype=torch.float64) - 0.5
    expected = photons[:, None, None] * psf.evaluate(dx, dy, z_nm, roi_px) + BG_PHOTONS
    adu = camera.photons_to_adu(expected, generator)
    return camera.adu_to_photons(adu), dx, dy


def _rms(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(values**2))) if values.size else None


def _mean(values: np.ndarray, scale: float = 1.0) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.mean(values) * scale) if values.size else None


def score_fits(
    case: Case, fit: FitResult, truth: dict[str, torch.Tensor], noise: NoiseModel
) -> dict[str, object]:
    """RMS(error / sqrt(CRLB)), bias and failures of fits against their truth."""
    bg = torch.full_like(truth["photons"], BG_PHOTONS)
    bound = crlb(
        case.psf,
        truth["z"],
        truth["photons"],
        bg,
        dx_px=truth["dx"],
        dy_px=truth["dy"],
        noise=noise,
        size=case.roi_px,
    ).numpy()
    est = torch.stack([fit.dx_px, fit.dy_px, fit.z_nm, fit.photons], 1).numpy()
    err = est - torch.stack([truth["dx"], truth["dy"], truth["z"], truth["photons"]], 1).numpy()
    if not case.psf.is_3d:
        err[:, 2] = np.nan
    finite = np.isfinite(est).all(1)  # z is 0 for 2D fits
    ok = finite & (np.abs(err[:, 0]) <= FAIL_PX) & (np.abs(err[:, 1]) <= FAIL_PX)
    z_score = err[ok, :3] / bound[ok, :3]
    outlier = np.nan_to_num(np.abs(z_score), nan=0.0).max(1) > OUTLIER_BOUNDS
    n = len(err)
    return {
        "n": n,
        "failed_pct": round(float(100 * (1 - ok.mean())), 2),
        "outliers_pct": round(float(100 * outlier.sum() / n), 2),
        "ratio_x": _rms(z_score[:, 0]),
        "ratio_y": _rms(z_score[:, 1]),
        "ratio_z": _rms(z_score[:, 2]),
        "bias_x_nm": _mean(err[ok, 0], PIXEL_SIZE_NM),
        "bias_y_nm": _mean(err[ok, 1], PIXEL_SIZE_NM),
        "bias_z_nm": _mean(err[ok, 2]),
        "bias_photons_pct": _mean(err[ok, 3] / truth["photons"].numpy()[ok], 100.0),
        "crlb_x_nm": float(np.median(bound[:, 0])) * PIXEL_SIZE_NM,
        "crlb_z_nm": float(np.median(bound[:, 2])) if case.psf.is_3d else None,
    }


def crlb_cell(
    case: Case, photons: torch.Tensor, z_nm: torch.Tensor, seed: int
) -> dict[str, object]:
    """Simulate, fit and score one cell of a sweep."""
    camera = Camera.from_config(CameraConfig())
    noise = NoiseModel.from_camera(camera.config)
    generator = torch.Generator().manual_seed(seed)
    rois, dx, dy = simulate_rois(case.psf, case.roi_px, photons, z_nm, camera, generator)
    fit = fit_rois(case.psf, rois, noise=noise)
    truth = {"dx": dx, "dy": dy, "z": z_nm, "photons": photons}
    return score_fits(case, fit, truth, noise)


def crlb_sweeps(cases: list[Case], sizes: Sizes) -> tuple[list[dict], list[dict]]:
    """Rows of the photon sweep and of the z sweep."""
    by_photons, by_z = [], []
    for c, case in enumerate(cases):
        n = sizes.rois_3d if case.psf.is_3d else sizes.rois_2d
        for p, photons in enumerate(sizes.photons):
            generator = torch.Generator().manual_seed(1000 * c + p)
            z = _uniform(n, *Z_RANGE_NM, generator) if case.psf.is_3d else torch.zeros(n)
            z = z.to(torch.float64)
            ph = torch.full((n,), float(photons), dtype=torch.float64)
            row = {"psf": case.name, "photons": photons}
            row.update(crlb_cell(case, ph, z, seed=1000 * c + p + 1))
            by_photons.append(row)
            print("crlb", row, flush=True)
        if not case.psf.is_3d:
            continue
        edges = sizes.z_edges_nm
        for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
            generator = torch.Generator().manual_seed(1000 * c + 500 + k)
            z = _uniform(n, lo, hi, generator)
            ph = torch.full((n,), Z_SWEEP_PHOTONS, dtype=torch.float64)
            row = {"psf": case.name, "z_bin_nm": f"{lo}..{hi}"}
            row.update(crlb_cell(case, ph, z, seed=1000 * c + 600 + k))
            by_z.append(row)
            print("crlb", row, flush=True)
    return by_photons, by_z


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


# ------------------------------------------------------------------ density


def density_rows(cases: list[Case], sizes: Sizes) -> list[dict]:
    """localize_mle on simulated movies at each density, per 3D PSF."""
    rows = []
    for c, case in enumerate(cases):
        if case.config is None or not case.psf.is_3d:
            continue
        for k, density in enumerate(DENSITIES):
            cfg = Config.model_validate({
                "image": {"size_px": 64, "pixel_size_nm": PIXEL_SIZE_NM},
                "psf": case.config.model_dump(),
                "emitters": {"density_per_um2": density, "photons_mean": 5000.0,
                             "photons_std": 1000.0},
                "background": {"level_photons": (BG_PHOTONS, BG_PHOTONS)},
            })  # fmt: skip
            sim = Simulator(cfg)
            batch = sim.sample(1, sizes.density_frames, sim.generator(100 * c + k))
            photons = sim.camera.adu_to_photons(batch.adu[0])
            truth = batch.emitters.to_table(PIXEL_SIZE_NM)
            truth["bg"] = BG_PHOTONS
            truth = add_crlb_columns(truth, cfg)
            start = time.perf_counter()
            pred = localize_mle(
                photons, case.psf, pixel_size_nm=PIXEL_SIZE_NM, roi_size=case.roi_px,
                noise=NoiseModel.from_camera(cfg.camera),
            )  # fmt: skip
            seconds = time.perf_counter() - start
            m, _ = evaluate(pred, truth, min_photons=MIN_PHOTONS)
            rows.append({
                "psf": case.name, "density_per_um2": density, "frames": sizes.density_frames,
                "detect_sigma_px": round(psf_width_px(case.psf), 2),
                "gt_counted": m.tp + m.fn, "predicted": len(pred), "jaccard": m.jaccard,
                "recall": m.recall, "precision": m.precision,
                "rmse_lateral_nm": m.rmse_lateral_nm, "rmse_axial_nm": m.rmse_axial_nm,
                "crlb_ratio_x": m.crlb_ratio_x, "crlb_ratio_z": m.crlb_ratio_z,
                "fit_seconds": round(seconds, 2),
            })  # fmt: skip
            print("density", rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------ speed


def time_fits(case: Case, rois: torch.Tensor, noise: NoiseModel, seconds: float) -> list[float]:
    """Seconds per call of fit_rois on `rois`, repeated for `seconds` (at least once)."""
    batch_seconds: list[float] = []
    start = time.perf_counter()
    while not batch_seconds or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fit_rois(case.psf, rois, noise=noise)
        batch_seconds.append(time.perf_counter() - t)
    return batch_seconds


def op_seconds(threads: int) -> float:
    """Median time of an elementwise op on 10^5 doubles (parallel in torch) with `threads`."""
    torch.set_num_threads(threads)
    x = torch.rand(100_000, dtype=torch.float64)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        torch.exp(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times[10:]))


def speed_rows(cases: list[Case], sizes: Sizes, seconds: float) -> list[dict]:
    """ROI fits per second for each PSF, with 1 and 2 torch threads.

    With other work on the cores, torch's threads can stall each other (each parallel op
    waits for a descheduled thread), and a batch with 2 threads may then take minutes. A
    thread count whose elementwise op (10^5 doubles) is more than 3 times slower than with
    1 thread is not timed; its row is marked ``stalled``.
    """
    rows = []
    camera = Camera.from_config(CameraConfig())
    noise = NoiseModel.from_camera(camera.config)
    for c, case in enumerate(cases):
        n = sizes.speed_rois
        generator = torch.Generator().manual_seed(5000 + c)
        z = _uniform(n, *Z_RANGE_NM, generator) if case.psf.is_3d else torch.zeros(n)
        ph = torch.full((n,), 5000.0, dtype=torch.float64)
        rois, _, _ = simulate_rois(case.psf, case.roi_px, ph, z.double(), camera, generator)
        reference = op_seconds(1)
        for threads in SPEED_THREADS:
            stalled = op_seconds(threads) > 3 * reference
            batch_seconds = []
            if not stalled:
                fit_rois(case.psf, rois[:64], noise=noise)  # warm-up
                batch_seconds = time_fits(case, rois, noise, seconds)
            rows.append(
                {
                    "psf": case.name,
                    "roi_px": case.roi_px,
                    "batch_rois": n,
                    "z_starts": 3 if case.psf.is_3d else 1,
                    "torch_threads": threads,
                    "batches": len(batch_seconds),
                    "fits_per_s": (
                        round(n * len(batch_seconds) / sum(batch_seconds), 1)
                        if batch_seconds
                        else None
                    ),
                    "best_batch_fits_per_s": (
                        round(n / min(batch_seconds), 1) if batch_seconds else None
                    ),
                    "stalled": stalled,
                }
            )
            print("speed", rows[-1], flush=True)
    torch.set_num_threads(ACCURACY_THREADS)
    return rows


# ------------------------------------------------------------------ PSFs


def spline_case(psf_path: str | None, workdir: Path) -> tuple[Case | None, str]:
    """Case (c): the PSF file given, else a calibration of the EPFL astigmatic beads."""
    from denseloc.calibration import load_psf

    if psf_path is not None:
        path = Path(psf_path)
        psf = load_psf(path)
        return Case(f"file:{path.name}", psf, 15, PSFConfig(kind="file", path=path)), (
            f"PSF (c) from {path}."
        )
    if not BEADS.is_file():
        return None, f"no spline PSF: {BEADS} not found and no --psf given; (c) skipped."
    try:
        from denseloc.calibration.beads import calibrate_beads

        start = time.perf_counter()
        calibration = calibrate_beads(
            BEADS, z_step_nm=10.0, pixel_size_nm=PIXEL_SIZE_NM, camera=CameraConfig(),
            z_range_nm=(-750.0, 750.0),
        )  # fmt: skip
        path = calibration.save(workdir / "beads_as_spline.h5")
        psf = load_psf(path)
    except (ImportError, AttributeError, DenselocError, OSError, ValueError) as exc:
        return None, f"no spline PSF: calibrating {BEADS.name} failed ({exc}); (c) skipped."
    note = (
        f"PSF (c): cubic spline calibrated from {BEADS.name} (z step 10 nm, EMCCD defaults) in "
        f"{time.perf_counter() - start:.1f} s: {calibration.n_beads_used} beads, relative "
        f"residual {calibration.relative_residual:.4f}."
    )
    return Case("spline", psf, 15, PSFConfig(kind="file", path=path)), note


def cases_under_test(psf_path: str | None, workdir: Path) -> tuple[list[Case], str]:
    """(a) 2D Gaussian, (b) astigmatic Gaussian, (c) spline when available."""
    gauss_cfg = PSFConfig(kind="gaussian")
    astig_cfg = PSFConfig(kind="astigmatic")
    cases = [
        Case("gaussian", psf_from_config(gauss_cfg), 11, gauss_cfg),
        Case("astigmatic", psf_from_config(astig_cfg), 15, astig_cfg),
    ]
    spline, note = spline_case(psf_path, workdir)
    print(note, flush=True)
    if spline is not None:
        cases.append(spline)
    return cases, note


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    parser.add_argument("--psf", help="PSF calibration file (.h5) for case (c)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="timing duration per speed case (default 5, --quick 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(ACCURACY_THREADS)
    sizes = QUICK if args.quick else FULL
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    prefix = "mle_quick" if args.quick else "mle"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cases, psf_note = cases_under_test(args.psf, Path(tmp))
        sizes_note = (
            f"{sizes.rois_2d} ROIs per cell (2D), {sizes.rois_3d} (3D). "
            if not args.quick
            else "QUICK RUN (tiny sizes). "
        )
        crlb_note = (
            sizes_note + "Isolated emitters, background 100 photons/px, EMCCD defaults "
            "(EPFL 2016). ratio_* = RMS(error_i / sqrt(CRLB_i)) over fits that did not fail, "
            "each emitter's own bound at its true position, z and photons for the fitted ROI "
            "size (1 = efficient). failed: non-finite or > 1.5 px from the truth; outliers: "
            "> 5 bounds off in some axis (included in the ratios). crlb_*_nm: median bound. "
            "Where failed_pct is large the ratios are over a truncated sample and understate "
            "the error: for a broad PSF at few photons 1.5 px may be only 2-3 bounds. " + psf_note
        )
        by_photons, by_z = crlb_sweeps(cases, sizes)
        write_results(
            f"{prefix}_crlb_photons",
            by_photons,
            crlb_note + " z uniform in [-700, 700] nm for 3D PSFs.",
        )
        write_results(f"{prefix}_crlb_z", by_z, crlb_note + " 2,000 photons per emitter.")
        t1 = time.perf_counter()
        rows = density_rows(cases, sizes)
        write_results(
            f"{prefix}_density", rows,
            "localize_mle (threshold 5, 15 px ROIs; detect_sigma_px: the detection filter's "
            "width, psf_width_px) on 64x64 px movies, EMCCD defaults, photons "
            "Normal(5000, 1000), background 100 photons/px, z uniform in [-750, 750] nm, on-time "
            "2 frames. Jaccard etc. count ground truth with >= 500 photons in the frame; "
            "tolerance 250 nm lateral, 500 nm axial. crlb_ratio_*: RMS(error / sqrt(CRLB)) of "
            "matched emitters, bound for an isolated emitter on the PSF's full patch. "
            + psf_note,
        )  # fmt: skip
        t2 = time.perf_counter()
        rows = speed_rows(cases, sizes, seconds)
        write_results(
            f"{prefix}_speed",
            rows,
            "fit_rois, 30 Levenberg-Marquardt iterations per start, float64, 2 and 1 torch "
            "threads (per row; the Machine line shows the 1 thread of the accuracy parts); "
            "ROIs of 5000 photons on 100 background photons/px (EMCCD); the CRLB at the "
            "estimate is included. fits_per_s over all batches timed; best_batch_fits_per_s "
            "from the fastest batch (less affected by other load on the machine). stalled: not "
            "timed, because an elementwise torch op ran over 3 times slower with this many "
            "threads than with 1 (threads stalling each other on a busy machine). " + psf_note,
        )
    t3 = time.perf_counter()
    print(
        f"seconds: crlb {t1 - t0:.0f}, density {t2 - t1:.0f}, speed {t3 - t2:.0f}, "
        f"total {t3 - t0:.0f}"
    )


if __name__ == "__main__":
    main()
