"""3D PSF calibration from a z-stack of fluorescent beads (DESIGN section 5).

A user images sub-diffraction beads on a coverslip while stepping the focus by a known
distance; slice ``t`` of the stack shows each bead as an emitter at
``z = (t - reference_slice) * z_step_nm``, z being the emitter's height above the focal
plane. ``z_step_nm`` is signed: moving the focal plane *up* (into the sample) by 10 nm per
slice leaves the bead 10 nm further *below* it, so such a stack, the usual acquisition, has
``z_step_nm = -10``; SMAP and DECODE read bead stacks that way (see
:mod:`denseloc.calibration.smap`). A positive step means the bead rises relative to the focal
plane from slice to slice (the focus moved down, or the stage up). The sign mirrors the PSF
in z: with the wrong one, every z is reported with the wrong sign.

:func:`calibrate_beads` turns such a stack into a
:class:`~denseloc.calibration.spline.CubicSplinePSF`:

1. **Photons.** ADU are converted to photons with the camera model
   (:meth:`denseloc.sim.camera.Camera.adu_to_photons`), never implicitly.
2. **Background.** Per slice, the mean of the pixels farther than ``roi_size_px`` from every
   detected spot, smoothed along z: bead slides have a flat background, and a ring around each
   bead would pick up the PSF's far tails instead (defocused PSFs reach well beyond the ROI).
   With too few such pixels, the outer two-pixel frame of the image is used.
3. **Detection.** Local maxima of the z-maximum projection of the (1 px Gaussian-filtered)
   photon stack that exceed its median by ``min_snr`` robust standard deviations.
4. **Rejection**, each with a reason kept in the result: too close to the image edge for an
   ROI; too close to another spot (ROIs of ``roi_size_px`` would overlap); saturated (a pixel
   at the ADC maximum ``camera.adc_max_adu``, or a flat top: the bead's largest ADU value
   repeated in 4 or more pixels); too dim (total photons below ``min_relative_brightness``
   times the median bead); and, after registration, a shape unlike the other beads (distance
   from the pixel-wise median of the beads above ``max_residual_ratio`` times the median
   distance; with 3 or more beads).
5. **Registration in x, y and z** on whole 3D stacks, not on a centroid of the in-focus
   plane (whose centre an astigmatic or aberrated PSF does not define well). Every bead is
   aligned to the mean of the *other* beads (no self-correlation bias; Gauss-Seidel sweeps),
   alternating ``registration_iterations`` times between:

   - laterally, maximising the Fourier-interpolated 3D cross-correlation over a continuous
     (y, x) shift (integer peak, then Newton steps on its analytic gradient and Hessian);
   - axially, minimising the least-squares difference of per-plane normalised stacks
     (smoothed along z, cubic-spline interpolated) over a continuous z shift. The PSF changes
     slowly along z, so the correlation peak is broad there and any window pulls it towards
     zero shift; a fixed block of planes has no such bias, and per-plane normalisation keeps
     bleaching from posing as a z shift.

   Shifts are then applied in real space by cubic-spline interpolation
   (:func:`scipy.ndimage.shift`); planes shifted in from beyond the ends of a bead's stack
   are left out of the average. Conventions: z = 0 is the reference slice for the *mean* bead
   (the beads' z offsets average to 0); laterally, the PSF centre is the centroid of the
   z-projected average (the exact centre for any PSF symmetric under a 180 degree rotation,
   e.g. astigmatism). On simulated beads this recovers positions to < 0.01 px and z offsets to
   about 2 nm.
6. **Normalisation** (see below), **averaging** over beads, a Savitzky-Golay smoothing
   along z (none laterally; its length chosen by leave-one-bead-out cross-validation, see
   below) and the spline fit (:meth:`CubicSplinePSF.from_stack`) with z = 0 at the
   reference slice.
7. **Report**: the measured (unsmoothed) average, the model (the spline evaluated on the same
   grid), the relative residual ``||measured - model|| / ||measured||``, the beads used and
   rejected, and a Huang fit of the widths (:mod:`denseloc.calibration.astigmatic`).

Normalisation
-------------
Localization fits ``mu = N * psf(x, y, z) + b`` with ``N`` the emitter's photon count. For
``N`` to mean the same at every z, ``psf`` must sum over the whole image plane to 1 at every
z (a defocused emitter is not dimmer, only wider), so that within the ROI each plane sums to
the *fraction* of the photons that land there. Two effects in a real bead stack must not
leak into the PSF: the beads bleach and the illumination flickers during the stack (in the
EPFL 2016 stacks the beads' total photons fall by 30-47 % from the first to the last slice,
with a 1-3 % slice-to-slice flicker common to all beads), and defocus spreads light beyond
the ROI. Hence:

- each bead's registered ROI is divided, slice by slice, by its own sum (every plane of the
  average then sums to 1 in the ROI: bleaching and flicker cancel);
- the average is multiplied, plane by plane, by the *encircled fraction* ``f(z)``: the ROI sum
  divided by the sum over a larger window (``norm_size_px``, default ``2 roi_size_px - 1``)
  around each bead whose window fits in the image and holds no other spot, averaged over
  those beads and smoothed along z. With no such bead, ``f = 1`` (unit energy per plane in the
  ROI) and :attr:`BeadCalibration.normalisation` says so.

So each plane of the PSF sums, within the ROI, to the fraction of the emitter's photons
that fall in the ROI (measured up to the normalisation window; light beyond it is treated as
background). A global normalisation (one factor for the whole stack, e.g. the in-focus plane
summing to 1 as in SMAP) would keep the bleaching in the PSF and make photon estimates
depend on z; unit energy per plane within the ROI would overestimate the PSF of defocused
planes and underestimate their photons.

The z step
----------
It cannot be checked from the images alone. It is checked against ``z_range_nm`` when that is
given (the z of the first and last slices; they must be ``(T - 1) z_step_nm`` apart within half a
step), and the stack must sample z finely enough for a spline: the median relative change
between adjacent planes of the averaged PSF, less the part noise explains, must stay below
``max_plane_change`` (0.5). The EPFL 2016 stacks give 0.02 at their 10 nm step and, taking
every k-th slice, 0.1 at 50 nm, 0.2-0.24 at 100 nm, 0.42-0.48 at 200 nm and 0.57-0.70 at
300 nm: the check rejects steps beyond about 250 nm, where the PSF changes by half between
slices. A fitted focal depth outside 100-2000 nm is reported as a
:class:`~denseloc.errors.DenselocWarning` (a wrong unit or step is the usual cause).

Smoothing along z
-----------------
The average of a few beads still holds noise that varies from plane to plane. A spline
through it follows that noise, and its z derivative, which is what z is estimated from, is
rough. A rough PSF promises z information at scales finer than any fit resolves: its
Cramer-Rao bound in z is too small, no estimator reaches it, and a network trained on it
learns features of the calibration's noise. On the EPFL 2016 astigmatic stack with the fixed
60 nm of this module until 2026-12-03 (``benchmarks/results/psf_smoothing.md``), the bound's
RMS wiggle about its 100 nm running mean was 0.084 in log, and the maximum-likelihood
fitter's z errors were 1.26-1.36 times it from -200 to 400 nm on data simulated from that
very PSF. Too much smoothing instead erases real structure.

``z_smoothing_nm=None`` (the default) chooses the length by leaving each bead out in turn:
the smoothed mean of the other beads predicts the left-out bead, and the length with the
smallest error over all beads wins. The beads' own noise is independent from bead to bead,
so this finds the length that best estimates their common PSF from one bead fewer. (Not
quite independent: each bead is registered against the others' average, and the per-slice
background and the encircled fraction are estimated from all beads at once; planes no other
bead has are copied from the nearest one they have, not taken from the bead left out.) A
single bead leaves nothing to predict: :data:`FALLBACK_Z_SMOOTHING_NM`.
:attr:`BeadCalibration.z_smoothing_nm` is the length used and
:attr:`BeadCalibration.z_smoothing_scores` the prediction errors.

The residual
------------
:attr:`BeadCalibration.relative_residual` is ``||measured - model|| / ||measured||`` between the
unsmoothed average and the spline on the same grid. The spline interpolates its input, so
this measures what the z smoothing removed: the noise left in the average plus any structure
finer than ``z_smoothing_nm`` (0 when the step is too coarse to smooth). How much single
beads differ from the others (noise and shape) is :attr:`BeadCalibration.bead_residual`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import torch
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.optimize import minimize_scalar
from scipy.signal import savgol_filter

from denseloc.calibration.astigmatic import AstigmaticFit, fit_astigmatic
from denseloc.calibration.spline import CubicSplinePSF
from denseloc.config import PLAUSIBLE_PIXEL_NM, CameraConfig
from denseloc.errors import DenselocError, DenselocWarning, InputFileError
from denseloc.sim.camera import Camera

__all__ = [
    "REJECTION_REASONS",
    "Bead",
    "BeadCalibration",
    "RejectedBead",
    "calibrate_bead_file",
    "calibrate_beads",
]

logger = logging.getLogger(__name__)

REJECTION_REASONS = {
    "edge": "too close to the image edge",
    "close": "too close to another bead",
    "saturated": "saturated",
    "dim": "too dim",
    "shape": "shape unlike the other beads",
}
"""Why a bead can be rejected: key -> description."""

_MIN_SLICES = 5
_REGISTRATION_MARGIN_PX = 4  # extra pixels around the ROI for sub-pixel shifts
_FLAT_TOP_PIXELS = 4  # a bead whose maximum ADU occurs this often has a clipped top
_MIN_BACKGROUND_PIXELS = 200
_Z_REGISTRATION_SMOOTHING = 1.5  # Gaussian sigma along z before axial registration, planes
_DEPTH_PLAUSIBLE_NM = (100.0, 2000.0)
_Z_SMOOTHING_MAX_NM = 1000.0  # longest smoothing along z cross-validation considers
FALLBACK_Z_SMOOTHING_NM = 150.0
"""Smoothing along z (nm) of a single bead, which leaves none out for cross-validation: the
length the six beads of the EPFL 2016 astigmatic stack choose."""


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bead:
    """A bead that entered the calibration.

    Attributes
    ----------
    x_px, y_px : float
        Registered centre in the stack, pixel index coordinates (centre of pixel (0, 0) at 0).
    z_offset_nm : float
        Axial position relative to the mean bead: slice ``t`` shows this bead as an emitter at
        ``z_nm[t] + z_offset_nm``.
    photons : float
        Median over slices of the bead's background-subtracted photons in the ROI.
    residual : float
        ``||bead - mean of the others|| / ||mean of the others||`` over its valid slices, every
        plane at unit energy (noise + shape).
    """

    x_px: float
    y_px: float
    z_offset_nm: float
    photons: float
    residual: float


@dataclass(frozen=True)
class RejectedBead:
    """A spot that was left out, and why.

    Attributes
    ----------
    x_px, y_px : float
        Detected position in the stack (the brightest pixel), pixel index coordinates.
    reason : str
        A key of :data:`REJECTION_REASONS`.
    """

    x_px: float
    y_px: float
    reason: str


@dataclass
class BeadCalibration:
    """Result of :func:`calibrate_beads`.

    Attributes
    ----------
    psf : CubicSplinePSF
        The calibrated PSF (z = 0 at :attr:`reference_slice` of the stack).
    measured : ndarray of shape (T, S, S)
        Registered, normalised average of the beads (before smoothing along z): plane ``t``
        is the fraction of an emitter's photons per pixel at ``z_nm[t]``, emitter at the centre
        of the central pixel. The planes are in rising z: for a negative ``z_step_nm``, in
        the reverse order of the stack's slices.
    model : ndarray of shape (T, S, S)
        The spline evaluated on the same grid.
    z_nm : ndarray of shape (T,)
        Axial position of each plane, nm (rising).
    encircled_fraction : ndarray of shape (T,)
        Sum of each plane of :attr:`measured`: the fraction of the photons inside the ROI.
    beads : list of Bead
        Beads used.
    rejected : list of RejectedBead
        Spots left out.
    relative_residual : float
        ``||measured - model|| / ||measured||`` (see the module docstring, The residual).
    bead_residual : float
        Median over the beads used of ``||bead - mean of the others|| / ||mean of the others||``
        (every plane at unit energy): single-bead noise plus shape differences.
    astigmatic : AstigmaticFit or None
        Huang fit of the widths, or None where it failed (then see :attr:`notes`).
    z_step_nm, pixel_size_nm : float
        Axial step (signed, as given) and pixel size, nm.
    reference_slice : float
        Slice index of z = 0 in the stack as given.
    normalisation : str
        ``"encircled fraction (window N px, K beads)"`` or ``"unit energy in the ROI"``.
    z_smoothing_nm : float
        Length of the smoothing along z, nm (see Smoothing along z).
    z_smoothing_scores : dict of float to float
        Candidate length (nm) -> leave-one-bead-out prediction error, relative to that of no
        smoothing (the smallest was used); empty when the length was given or not
        cross-validated.
    source : str or None
        Where the stack came from.
    notes : list of str
        Things the user should know (fallbacks, warnings).
    """

    psf: CubicSplinePSF
    measured: np.ndarray
    model: np.ndarray
    z_nm: np.ndarray
    encircled_fraction: np.ndarray
    beads: list[Bead]
    rejected: list[RejectedBead]
    relative_residual: float
    bead_residual: float
    astigmatic: AstigmaticFit | None
    z_step_nm: float
    pixel_size_nm: float
    reference_slice: float
    normalisation: str
    z_smoothing_nm: float
    z_smoothing_scores: dict[float, float] = field(default_factory=dict)
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_beads_used(self) -> int:
        """Number of beads averaged."""
        return len(self.beads)

    @property
    def n_beads_rejected(self) -> int:
        """Number of spots left out."""
        return len(self.rejected)

    @property
    def rejection_counts(self) -> dict[str, int]:
        """Rejected spots per reason (keys of :data:`REJECTION_REASONS`)."""
        return dict(Counter(r.reason for r in self.rejected))

    @property
    def roi_size_px(self) -> int:
        """Lateral size S of the calibrated stack, px."""
        return int(self.measured.shape[1])

    def summary(self) -> str:
        """A few lines for a terminal: beads, residual, Huang parameters."""
        reasons = ", ".join(
            f"{n} {REJECTION_REASONS[k]}" for k, n in sorted(self.rejection_counts.items())
        )
        lines = [
            f"PSF calibration from {self.source or 'bead stack'}: {self.n_beads_used} beads used, "
            f"{self.n_beads_rejected} rejected" + (f" ({reasons})" if reasons else ""),
            f"  {len(self.z_nm)} planes, z {self.z_nm[0]:g}..{self.z_nm[-1]:g} nm "
            f"(step {self.z_step_nm:g} nm, z = 0 at slice {self.reference_slice:g}), "
            f"ROI {self.roi_size_px} px",
            f"  relative residual ||measured - model|| / ||measured|| = "
            f"{self.relative_residual:.4f} (single beads vs the others: {self.bead_residual:.3f})",
            f"  normalisation: {self.normalisation}; photons in the ROI "
            f"{self.encircled_fraction.min():.3f}..{self.encircled_fraction.max():.3f}",
            f"  smoothing along z: {self.z_smoothing_nm:g} nm"
            + (" (leave-one-bead-out cross-validation)" if self.z_smoothing_scores else ""),
        ]
        if self.astigmatic is not None:
            c = self.astigmatic.config
            lines.append(
                f"  Huang fit: sigma0 ({c.sigma0_px[0]:.3f}, {c.sigma0_px[1]:.3f}) px, focus "
                f"({c.focus_nm[0]:.0f}, {c.focus_nm[1]:.0f}) nm, depth "
                f"({c.depth_nm[0]:.0f}, {c.depth_nm[1]:.0f}) nm"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def metadata(self) -> dict[str, Any]:
        """Attributes saved with the PSF (plain numbers, strings and arrays)."""
        meta: dict[str, Any] = {
            "calibration": "bead z-stack",
            "n_beads_used": self.n_beads_used,
            "n_beads_rejected": self.n_beads_rejected,
            "rejected": "; ".join(
                f"{n} {REJECTION_REASONS[k]}" for k, n in sorted(self.rejection_counts.items())
            ),
            "z_step_nm": self.z_step_nm,
            "reference_slice": self.reference_slice,
            "roi_size_px": self.roi_size_px,
            "relative_residual": self.relative_residual,
            "bead_residual": self.bead_residual,
            "normalisation": self.normalisation,
            "encircled_fraction": self.encircled_fraction,
            "z_smoothing_nm": self.z_smoothing_nm,
        }
        if self.beads:
            meta["bead_xyz"] = np.array(
                [[b.x_px, b.y_px, b.z_offset_nm] for b in self.beads], dtype=np.float64
            )
        if self.astigmatic is not None:
            c = self.astigmatic.config
            for name in ("sigma0_px", "focus_nm", "depth_nm", "a3", "a4"):
                meta[f"astigmatic_{name}"] = np.asarray(getattr(c, name), dtype=np.float64)
            meta["astigmatic_z_range_nm"] = np.asarray(self.astigmatic.z_range_nm)
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spline PSF with the calibration's metadata to an ``.h5`` file."""
        return self.psf.save(
            path,
            pixel_size_nm=self.pixel_size_nm,
            source=self.source,
            extra_attrs=self.metadata(),
        )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def calibrate_bead_file(
    stack_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    z_step_nm: float,
    pixel_size_nm: float,
    camera: CameraConfig,
    roi_size_px: int = 25,
    z_range_nm: tuple[float, float] | None = None,
    reference_slice: float | None = None,
    z_smoothing_nm: float | None = None,
    report_dir: str | os.PathLike | None = None,
    astigmatic_path: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> BeadCalibration:
    """Calibrate a PSF from a bead z-stack file and write it (the ``denseloc calibrate`` path).

    Parameters
    ----------
    stack_path : path-like
        Bead z-stack, anything :func:`denseloc.io.open_movie` reads, shape (T, H, W), in ADU.
    out_path : path-like
        Spline PSF to write (``.h5``), readable by :func:`denseloc.calibration.load_psf`.
    z_step_nm, pixel_size_nm, camera, roi_size_px, z_range_nm, reference_slice, z_smoothing_nm
        See :func:`calibrate_beads`.
    report_dir : path-like, optional
        Folder for the diagnostic PNGs (:func:`denseloc.calibration.report.write_report`).
    astigmatic_path : path-like, optional
        Also write the Huang fit as YAML here (``.yaml``), when the fit succeeded.
    progress : callable(str), optional
        Called with a short message at each stage.

    Returns
    -------
    BeadCalibration
        The result; ``relative_residual`` and ``summary()`` are what a CLI shows.
    """
    # Checked before the work: a spline under another suffix could not be loaded again.
    for path, suffixes, what in ((out_path, (".h5", ".hdf5"), "spline PSF"),
                                 (astigmatic_path, (".yaml", ".yml"), "astigmatic fit")):
        if path is not None and Path(path).suffix.lower() not in suffixes:
            raise DenselocError(f"{path}: the {what} is written as {' or '.join(suffixes)}")
    calibration = calibrate_beads(
        stack_path,
        z_step_nm=z_step_nm,
        pixel_size_nm=pixel_size_nm,
        camera=camera,
        roi_size_px=roi_size_px,
        z_range_nm=z_range_nm,
        reference_slice=reference_slice,
        z_smoothing_nm=z_smoothing_nm,
        progress=progress,
    )
    calibration.save(out_path)
    if astigmatic_path is not None:
        if calibration.astigmatic is None:
            calibration.notes.append("no astigmatic YAML written: the Huang fit failed")
        else:
            calibration.astigmatic.save(
                astigmatic_path,
                pixel_size_nm=pixel_size_nm,
                source=calibration.source,
                extra={"n_beads_used": calibration.n_beads_used},
            )
    if report_dir is not None:
        from denseloc.calibration.report import write_report

        if progress is not None:
            progress("writing the report")
        write_report(calibration, report_dir)
    logger.info("%s", calibration.summary())
    return calibration


def calibrate_beads(
    stack: str | os.PathLike | np.ndarray,
    *,
    z_step_nm: float,
    pixel_size_nm: float,
    camera: CameraConfig,
    roi_size_px: int = 25,
    z_range_nm: tuple[float, float] | None = None,
    reference_slice: float | None = None,
    norm_size_px: int | None = None,
    min_snr: float = 10.0,
    min_relative_brightness: float = 0.25,
    max_residual_ratio: float = 3.0,
    max_z_offset_nm: float = 300.0,
    registration_iterations: int = 3,
    z_smoothing_nm: float | None = None,
    max_plane_change: float = 0.5,
    source: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BeadCalibration:
    """Calibrate a cubic-spline PSF from a z-stack of beads (see the module docstring).

    Parameters
    ----------
    stack : path-like or ndarray of shape (T, H, W)
        The bead z-stack in ADU (a file :func:`denseloc.io.open_movie` reads, or an array).
    z_step_nm : float
        Change of the emitter's z (relative to the focal plane) from one slice to the next,
        nm; negative when the focus moved up between slices (see the module docstring).
    pixel_size_nm : float
        Camera pixel size in the sample, nm (stored with the PSF).
    camera : CameraConfig
        Camera model for the ADU -> photons conversion and the ADC maximum.
    roi_size_px : int
        Odd lateral size S of the calibrated PSF, px. Beads closer than this to each other
        are rejected.
    z_range_nm : (float, float), optional
        Emitter z of the first and the last slice, nm; checked against
        ``(T - 1) * z_step_nm`` and, without `reference_slice`, defines it
        (``-z_range_nm[0] / z_step_nm``).
    reference_slice : float, optional
        Slice index of z = 0; the middle slice ``(T - 1) / 2`` if neither this nor
        `z_range_nm` is given.
    norm_size_px : int, optional
        Window for the encircled fraction (see Normalisation); ``2 roi_size_px - 1`` if None.
        Equal to `roi_size_px`: every plane sums to 1 in the ROI.
    min_snr : float
        Detection threshold on the max-projection, in robust standard deviations.
    min_relative_brightness : float
        Beads whose photons are below this fraction of the median bead are rejected.
    max_residual_ratio : float
        With 3 or more beads, beads farther from the pixel-wise median bead than this times
        the median distance are rejected (shape unlike the others).
    max_z_offset_nm : float
        Largest axial offset of a bead from the others searched by the registration, nm.
    registration_iterations : int
        Rounds of registration against the average of the other beads.
    z_smoothing_nm : float or None, optional
        Length of the Savitzky-Golay (cubic) smoothing along z before the spline fit, nm;
        0 (or less than 5 slices) for none; None (default) to choose it by leave-one-bead-out
        cross-validation (see Smoothing along z).
    max_plane_change : float
        Largest acceptable median relative change between adjacent planes (z sampling).
    source : str, optional
        Name of the data for messages and the saved file (default: the file name).
    progress : callable(str), optional
        Called with a short message at each stage.

    Returns
    -------
    BeadCalibration

    Raises
    ------
    denseloc.errors.InputFileError
        For a file that cannot be read, or whose content cannot be calibrated: not a stack,
        no beads, only unusable beads, inconsistent z range, z sampled too coarsely (the
        message names the file). For an array input, :class:`DenselocError` with the same
        messages.
    """
    say = progress or (lambda message: None)
    path = None if isinstance(stack, np.ndarray) else Path(stack)
    name = source or (path.name if path is not None else "bead stack")

    def fail(problem: str) -> DenselocError:
        return (
            InputFileError(path, problem)
            if path is not None
            else DenselocError(f"{name}: {problem}")
        )

    adu = _read_stack(stack, path, fail)
    n_slices, height, width = adu.shape
    signed_step = z_step_nm
    roi = _check_parameters(
        z_step_nm=z_step_nm,
        pixel_size_nm=pixel_size_nm,
        roi_size_px=roi_size_px,
        norm_size_px=norm_size_px,
        z_smoothing_nm=z_smoothing_nm,
        height=height,
        width=width,
        fail=fail,
    )
    norm_size = 2 * roi - 1 if norm_size_px is None else int(norm_size_px)
    ref = _reference_slice(n_slices, z_step_nm, z_range_nm, reference_slice, fail)
    if z_step_nm < 0:  # z falls with the slice index: calibrate the slices in rising z
        adu = np.ascontiguousarray(adu[::-1])
        z_step_nm = -z_step_nm
        ref_rising = n_slices - 1 - ref
    else:
        ref_rising = ref
    z_nm = (np.arange(n_slices) - ref_rising) * z_step_nm

    say("converting ADU to photons")
    cam = Camera.from_config(camera, (height, width))
    photons = cam.adu_to_photons(torch.from_numpy(adu)).numpy().astype(np.float64, copy=False)

    say("finding beads")
    spots, projection_noise = _find_spots(photons, min_snr)
    if len(spots) == 0:
        raise fail(
            f"no beads found: no spot in the z-maximum projection stands out by {min_snr:g} "
            f"robust standard deviations ({projection_noise:.3g} photons) from its median; is "
            "this a bead z-stack, and is the camera setting right?"
        )
    background = _background(photons, spots, roi)
    photons -= background[:, None, None]
    crop = roi + 2 * _REGISTRATION_MARGIN_PX
    kept, rejected = _select_beads(
        photons,
        adu,
        spots,
        roi=roi,
        crop=crop,
        camera=camera,
        min_relative_brightness=min_relative_brightness,
    )
    if not kept:
        raise fail(f"no usable beads among {len(spots)} found: {_describe(rejected)}")
    logger.info(
        "%d spots found, %d kept, %d rejected (%s)",
        len(spots),
        len(kept),
        len(rejected),
        _describe(rejected) or "none",
    )

    say(f"registering {len(kept)} beads")
    max_z_shift = max(1, min(math.ceil(max_z_offset_nm / z_step_nm), n_slices // 3))
    reg, odd = _register_beads(
        photons,
        kept,
        roi=roi,
        crop=crop,
        max_z_shift=max_z_shift,
        iterations=registration_iterations,
        max_residual_ratio=max_residual_ratio,
    )
    rejected += [RejectedBead(float(x), float(y), "shape") for y, x in odd]
    if not reg.valid.any(axis=0).all():
        raise fail("the beads' z offsets leave slices without data; check max_z_offset_nm")
    change = _plane_change(reg.average, reg.noise)
    if change > max_plane_change:
        raise fail(
            f"z sampled too coarsely for a spline PSF: adjacent planes of the averaged PSF "
            f"differ by {100 * change:.0f} % (median; at most {100 * max_plane_change:.0f} % "
            f"expected). Take the stack with a smaller z step (10-50 nm), or check "
            f"z_step_nm={z_step_nm:g}"
        )

    notes: list[str] = []

    fraction, normalisation = _encircled_fraction(
        photons, reg.beads, reg.shifts, roi, norm_size, spots
    )
    if normalisation.startswith("unit"):
        notes.append(
            "no bead had a clean window of "
            f"{norm_size} px: each plane normalised to unit energy in the ROI"
        )
    measured = reg.average * fraction[:, None, None]

    if z_smoothing_nm is None:
        say("choosing the smoothing along z")
        z_smoothing_nm, scores = _choose_z_smoothing(reg.unit, reg.valid, fraction, z_step_nm)
        if not scores:
            why = "a single bead" if len(reg.beads) < 2 else "too few slices for its z step"
            notes.append(
                f"{why}: smoothing along z {z_smoothing_nm:g} nm, not cross-validated"
            )
    else:
        scores = {}
    say("fitting the spline")
    smoothed = _smooth_z(measured, z_smoothing_nm, z_step_nm)
    psf = CubicSplinePSF.from_stack(
        smoothed,
        z_step_nm,
        ref_rising,
        pixel_size_nm=pixel_size_nm,
        source=name,
    )
    zero = torch.zeros(n_slices, dtype=torch.float64)
    model = psf.evaluate(zero, zero, torch.as_tensor(z_nm), roi).numpy()
    residual = float(np.linalg.norm(measured - model) / np.linalg.norm(measured))

    say("fitting the astigmatic model")
    astig = _fit_widths(measured, z_nm, notes)

    beads = [
        Bead(
            x_px=float(x + shift[2]),
            y_px=float(y + shift[1]),
            z_offset_nm=float(-shift[0] * z_step_nm),
            photons=float(np.median(roi_photons.sum(axis=(1, 2))[ok])),
            residual=float(bead_residual),
        )
        for (y, x), shift, roi_photons, ok, bead_residual in zip(
            reg.beads, reg.shifts, reg.aligned, reg.valid, reg.residuals, strict=True
        )
    ]
    calibration = BeadCalibration(
        psf=psf,
        measured=measured,
        model=model,
        z_nm=z_nm,
        encircled_fraction=measured.sum(axis=(1, 2)),
        beads=beads,
        rejected=rejected,
        relative_residual=residual,
        bead_residual=float(np.median(reg.residuals)),
        astigmatic=astig,
        z_step_nm=float(signed_step),
        pixel_size_nm=float(pixel_size_nm),
        reference_slice=float(ref),
        normalisation=normalisation,
        z_smoothing_nm=float(z_smoothing_nm),
        z_smoothing_scores=scores,
        source=name,
        notes=notes,
    )
    psf.metadata.update(calibration.metadata())
    return calibration


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _read_stack(
    stack: str | os.PathLike | np.ndarray,
    path: Path | None,
    fail: Callable[[str], DenselocError],
) -> np.ndarray:
    """The stack as float64 ADU, (T, H, W), checked for shape."""
    if path is not None:
        from denseloc.io.movie import open_movie

        with open_movie(path) as movie:
            data = movie[:]
    else:
        data = np.asarray(stack)
    if data.ndim == 2 or (data.ndim == 3 and data.shape[0] == 1):
        shape = data.shape[-2:]
        raise fail(
            f"a single 2D image {shape[0]} x {shape[1]} px; a bead z-stack (T, H, W) with one "
            "slice per focus position is needed"
        )
    if data.ndim != 3:
        raise fail(f"expected a bead z-stack of shape (T, H, W), got shape {data.shape}")
    if data.shape[0] < _MIN_SLICES:
        raise fail(f"only {data.shape[0]} slices; a bead z-stack needs at least {_MIN_SLICES}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise fail(f"pixel type {data.dtype} is not a real number type")
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise fail("the stack contains NaN or infinite values")
    return data


def _check_parameters(
    *,
    z_step_nm: float,
    pixel_size_nm: float,
    roi_size_px: int,
    norm_size_px: int | None,
    z_smoothing_nm: float | None,
    height: int,
    width: int,
    fail: Callable[[str], DenselocError],
) -> int:
    if z_smoothing_nm is not None and not (math.isfinite(z_smoothing_nm) and z_smoothing_nm >= 0):
        raise DenselocError(
            f"`z_smoothing_nm` must be >= 0 nm (0: none), got {z_smoothing_nm}; leave it out "
            "to choose it by cross-validation"
        )
    if not (math.isfinite(z_step_nm) and z_step_nm != 0):
        raise DenselocError(
            f"`z_step_nm` must be a non-zero number, got {z_step_nm} (negative when the focus "
            "moved up between slices)"
        )
    lo, hi = PLAUSIBLE_PIXEL_NM
    if not lo <= pixel_size_nm <= hi:
        raise DenselocError(f"`pixel_size_nm` is {pixel_size_nm:g} nm, outside the {lo:g}-{hi:g} "
                            "nm of a camera pixel in the sample: is it in um, or the chip's?")
    if int(roi_size_px) != roi_size_px or roi_size_px < 7 or roi_size_px % 2 == 0:
        raise DenselocError(f"`roi_size_px` must be an odd integer >= 7, got {roi_size_px}")
    roi = int(roi_size_px)
    if norm_size_px is not None and (
        int(norm_size_px) != norm_size_px or norm_size_px < roi or norm_size_px % 2 == 0
    ):
        raise DenselocError(
            f"`norm_size_px` must be an odd integer >= roi_size_px ({roi}), got {norm_size_px}"
        )
    if min(height, width) < roi + 2 * _REGISTRATION_MARGIN_PX:
        raise fail(
            f"frames of {height} x {width} px are too small for ROIs of {roi} px "
            f"(need {roi + 2 * _REGISTRATION_MARGIN_PX} px); pass a smaller roi_size_px"
        )
    return roi


def _reference_slice(
    n_slices: int,
    z_step_nm: float,
    z_range_nm: tuple[float, float] | None,
    reference_slice: float | None,
    fail: Callable[[str], DenselocError],
) -> float:
    """Slice index of z = 0, after checking z_range_nm against the stack and the (signed)
    step."""
    if z_range_nm is not None:
        lo, hi = (float(v) for v in z_range_nm)  # the first and the last slice's z
        span = (n_slices - 1) * z_step_nm
        if not (hi - lo) * z_step_nm > 0:
            raise DenselocError(
                f"`z_range_nm` must be the z of the first and the last slice, rising with a "
                f"positive z_step_nm and falling with a negative one; got {z_range_nm} with "
                f"z_step_nm {z_step_nm:g}"
            )
        if abs((hi - lo) - span) > 0.5 * abs(z_step_nm):
            raise fail(
                f"z step does not match the stack: {n_slices} slices {z_step_nm:g} nm apart "
                f"span {span:g} nm, but z_range_nm ({lo:g}, {hi:g}) spans {hi - lo:g} nm"
            )
        from_range = -lo / z_step_nm
        if reference_slice is not None and abs(reference_slice - from_range) > 1e-6 * n_slices:
            raise DenselocError(
                f"`reference_slice` {reference_slice} disagrees with z_range_nm ({lo:g}, {hi:g}), "
                f"which puts z = 0 at slice {from_range:g}"
            )
        reference_slice = from_range
    if reference_slice is None:
        reference_slice = (n_slices - 1) / 2
    if not 0 <= reference_slice <= n_slices - 1:
        raise DenselocError(
            f"`reference_slice` (z = 0) must lie in [0, {n_slices - 1}], got {reference_slice:g}"
        )
    return float(reference_slice)


# --------------------------------------------------------------------------------------------
# Detection, background, rejection
# --------------------------------------------------------------------------------------------


def _find_spots(photons: np.ndarray, min_snr: float) -> tuple[np.ndarray, float]:
    """Local maxima of the filtered z-max projection, brightest first: (K, 2) int rows (y, x),
    and the projection's robust standard deviation (photons)."""
    projection = ndimage.gaussian_filter(photons, sigma=(0, 1, 1)).max(axis=0)
    median = float(np.median(projection))
    noise = float(1.4826 * np.median(np.abs(projection - median)))
    threshold = median + min_snr * max(noise, 1e-12)
    peaks = (projection == ndimage.maximum_filter(projection, size=7)) & (projection > threshold)
    spots = np.argwhere(peaks)
    spots = spots[np.argsort(-projection[spots[:, 0], spots[:, 1]], kind="stable")]
    # a flat (clipped) top is a plateau of equal maxima: keep one spot per 7 x 7 neighbourhood
    kept: list[np.ndarray] = []
    for spot in spots:
        if all(np.abs(spot - other).max() > 3 for other in kept):
            kept.append(spot)
    return np.array(kept, dtype=int).reshape(-1, 2), noise


def _background(photons: np.ndarray, spots: np.ndarray, roi: int) -> np.ndarray:
    """Background photons per pixel per slice, (T,), from pixels far from every spot."""
    n_slices, height, width = photons.shape
    far = np.ones((height, width), dtype=bool)
    yy, xx = np.ogrid[:height, :width]
    for y, x in spots:
        far &= (yy - y) ** 2 + (xx - x) ** 2 > roi**2
    if far.sum() < _MIN_BACKGROUND_PIXELS:
        far = np.zeros((height, width), dtype=bool)
        far[:2], far[-2:], far[:, :2], far[:, -2:] = True, True, True, True
        logger.info("few pixels far from the beads: background from the image border")
    level = photons[:, far].mean(axis=1)
    size = min(n_slices, 11)
    return ndimage.uniform_filter1d(level, size=size, mode="nearest")


def _select_beads(
    photons: np.ndarray,
    adu: np.ndarray,
    spots: np.ndarray,
    *,
    roi: int,
    crop: int,
    camera: CameraConfig,
    min_relative_brightness: float,
) -> tuple[list[tuple[int, int]], list[RejectedBead]]:
    """Split spots into usable beads (y, x) and rejected ones."""
    _, height, width = photons.shape
    half = crop // 2
    rejected: list[RejectedBead] = []
    candidates: list[tuple[int, int, float]] = []
    for k, (y, x) in enumerate(spots):
        y, x = int(y), int(x)
        others = np.delete(spots, k, axis=0)
        if not (half <= y < height - half and half <= x < width - half):
            reason = "edge"
        elif len(others) and (np.abs(others - (y, x)).max(axis=1) < roi).any():
            reason = "close"
        elif _saturated(_cut(adu, y, x, roi), camera.adc_max_adu):
            reason = "saturated"
        else:
            total = float(_cut(photons, y, x, roi).sum(axis=(1, 2)).mean())
            candidates.append((y, x, total))
            continue
        rejected.append(RejectedBead(float(x), float(y), reason))
    if not candidates:
        return [], rejected
    median = float(np.median([c[2] for c in candidates]))
    kept = []
    for y, x, total in candidates:
        if total < min_relative_brightness * median or total <= 0:
            rejected.append(RejectedBead(float(x), float(y), "dim"))
        else:
            kept.append((y, x))
    return kept, rejected


def _saturated(adu_roi: np.ndarray, adc_max: float) -> bool:
    """A pixel at the ADC maximum, or a flat top (the maximum repeated in many pixels)."""
    top = adu_roi.max()
    if top >= adc_max:
        return True
    return int((adu_roi == top).sum()) >= _FLAT_TOP_PIXELS


def _describe(rejected: list[RejectedBead]) -> str:
    counts = Counter(r.reason for r in rejected)
    return ", ".join(f"{n} {REJECTION_REASONS[k]}" for k, n in sorted(counts.items()))


def _cut(stack: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    half = size // 2
    return stack[:, y - half : y + half + 1, x - half : x + half + 1]


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def _tukey(n: int, taper: int) -> np.ndarray:
    """Window of length n: 1 in the middle, cosine tapers of `taper` samples at both ends."""
    w = np.ones(n)
    if taper > 0:
        ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(taper) + 0.5) / taper))
        w[:taper] = ramp
        w[-taper:] = ramp[::-1]
    return w


def _register(crops: np.ndarray, roi: int, max_z_shift: int, iterations: int) -> np.ndarray:
    """Sub-voxel positions (n, 3) = (z, y, x) of each bead relative to its crop's centre.

    Alternates `iterations` times between a lateral and an axial registration of every bead
    to the mean of the other beads (Gauss-Seidel: each bead meets the others as last
    updated), removes the mean shift (z = 0 for the mean bead), and finally centres the
    average laterally on its centroid.

    Laterally, the Fourier-interpolated 3D cross-correlation is maximised over (y, x) by
    Newton steps. Axially, the least-squares difference between per-plane normalised stacks
    (cubic-spline interpolated along z) is minimised: the PSF changes slowly along z, so the
    correlation peak is broad there and a window would pull it towards zero shift; the
    least-squares fit over a fixed block of planes has no such bias, and per-plane
    normalisation keeps bleaching from posing as a z shift.
    """
    n = crops.shape[0]
    shifts = np.zeros((n, 3))
    if n > 1:
        lateral = _LateralRegistration(crops, roi, max_z_shift)
        for it in range(iterations):
            shifts[:, 1:] = lateral.register(shifts, search=it == 0)
            shifts[:, 0] = _register_z(crops, shifts, roi, max_z_shift)
    average = _lateral_shift(crops, shifts).mean(axis=0)
    shifts[:, 1:] += _centroid(average.sum(axis=0), roi)
    return shifts


class _LateralRegistration:
    """Lateral registration by Fourier-interpolated cross-correlation of whole 3D stacks."""

    def __init__(self, crops: np.ndarray, roi: int, max_z_shift: int) -> None:
        n, n_slices, size, _ = crops.shape
        scale = crops.sum(axis=(1, 2, 3), keepdims=True)
        data = crops / np.where(scale > 0, scale, 1.0)
        # taper the ends in z and the margins laterally, then pad z, so that the circular
        # correlation of the FFT does not see the stacks' ends
        wz = _tukey(n_slices, max(2, n_slices // 10))
        wxy = _tukey(size, (size - roi) // 2 + 2)
        window = wz[:, None, None] * wxy[None, :, None] * wxy[None, None, :]
        pad = max_z_shift + 1
        padded = np.zeros((n, n_slices + 2 * pad, size, size))
        padded[:, pad : pad + n_slices] = data * window
        self.spectra = scipy.fft.fftn(padded, axes=(1, 2, 3))
        self.freqs = [np.fft.fftfreq(m) for m in padded.shape[1:]]

    def register(self, shifts: np.ndarray, *, search: bool) -> np.ndarray:
        """New lateral shifts (n, 2) for the given (z, y, x) shifts (z is kept)."""
        spectra, freqs = self.spectra, self.freqs
        n = spectra.shape[0]
        shifts = shifts.copy()
        aligned = spectra * _phase(freqs, shifts)
        total = aligned.sum(axis=0)
        for i in range(n):
            reference = (total - aligned[i]) / (n - 1)
            cross = spectra[i] * np.conj(reference)
            start = shifts[i].copy()
            if search:
                start[1:] = _integer_peak(cross)
            shifts[i] = _newton_peak(cross, freqs, start)
            total -= aligned[i]
            aligned[i] = spectra[i] * _phase(freqs, shifts[i : i + 1])[0]
            total += aligned[i]
        return shifts[:, 1:] - shifts[:, 1:].mean(axis=0)


def _phase(freqs: list[np.ndarray], shifts: np.ndarray) -> np.ndarray:
    """exp(2 pi i k . s) for each shift: (n, Z, Y, X); moves content at s to the origin."""
    ez = np.exp(2j * np.pi * freqs[0][None, :] * shifts[:, 0:1])
    ey = np.exp(2j * np.pi * freqs[1][None, :] * shifts[:, 1:2])
    ex = np.exp(2j * np.pi * freqs[2][None, :] * shifts[:, 2:3])
    return ez[:, :, None, None] * ey[:, None, :, None] * ex[:, None, None, :]


def _integer_peak(cross: np.ndarray, reach: int = 2) -> np.ndarray:
    """Integer lateral shift (y, x) within +-reach maximising the circular cross-correlation."""
    corr = np.real(scipy.fft.ifftn(cross))
    d = np.r_[0 : reach + 1, -reach:0]
    sub = corr[0][np.ix_(d % corr.shape[1], d % corr.shape[2])]
    k = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return np.array([d[k[0]], d[k[1]]], dtype=np.float64)


def _newton_peak(cross: np.ndarray, freqs: list[np.ndarray], start: np.ndarray) -> np.ndarray:
    """Maximise c(s) = Re sum cross * exp(2 pi i k.s) over the lateral (y, x) part of s.

    The gradient and Hessian are sums of ``k_a Im(p)`` and ``k_a k_b Re(p)`` over the
    spectrum, ``p = cross * exp(2 pi i k.s)``; with separable frequencies they reduce to sums
    over the marginals of ``p``. z stays at ``start[0]``.
    """
    _, ky, kx = freqs
    s = start.astype(np.float64).copy()
    for _ in range(20):
        p = cross * _phase(freqs, s[None])[0]
        p_yx = p.sum(axis=0)
        py, px = p_yx.sum(axis=1), p_yx.sum(axis=0)
        # elementwise sums rather than `@`: tiny BLAS calls stall when the CPU is shared
        grad = -2 * np.pi * np.array([(ky * py).sum().imag, (kx * px).sum().imag])
        h_yx = (ky[:, None] * p_yx * kx[None, :]).sum().real
        h_yy, h_xx = (ky * ky * py).sum().real, (kx * kx * px).sum().real
        hess = -4 * np.pi**2 * np.array([[h_yy, h_yx], [h_yx, h_xx]])
        eig = np.linalg.eigvalsh(hess)
        if eig.max() < 0:
            step = -np.linalg.solve(hess, grad)
        else:  # not in a maximum's basin: a small gradient-ascent step
            step = grad / (np.abs(eig).max() + 1e-30)
        step = np.clip(step, -0.5, 0.5)
        s[1:] = np.clip(s[1:] + step, -3.0, 3.0)
        if np.abs(step).max() < 1e-4:
            break
    return s


def _lateral_shift(crops: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move each crop laterally by -(y, x) of its shift (Fourier shift of every plane)."""
    size = crops.shape[-1]
    ey = np.exp(2j * np.pi * np.fft.fftfreq(size)[None, :] * shifts[:, 1:2])
    ex = np.exp(2j * np.pi * np.fft.rfftfreq(size)[None, :] * shifts[:, 2:3])
    phase = ey[:, None, :, None] * ex[:, None, None, :]
    return scipy.fft.irfft2(scipy.fft.rfft2(crops) * phase, s=(size, size))


def _register_z(crops: np.ndarray, shifts: np.ndarray, roi: int, max_z_shift: int) -> np.ndarray:
    """Axial shifts (n,) by least squares against the mean of the other beads (zero mean).

    Each bead's laterally aligned ROI, every plane normalised to unit sum, is compared with
    the others' over the planes ``[m, T - 1 - m]`` (m = `max_z_shift`, so that no shift up to
    m reads beyond the stack): the best integer shift, then a bounded scalar minimisation of
    the cubic-spline interpolated difference around it. Two Gauss-Seidel sweeps.
    """
    n, n_slices, size, _ = crops.shape
    lo = (size - roi) // 2
    stacks = _lateral_shift(crops, shifts)[:, :, lo : lo + roi, lo : lo + roi]
    sums = stacks.sum(axis=(2, 3), keepdims=True)
    floor = 1e-3 * np.abs(sums).max(axis=1, keepdims=True)
    unit = (stacks / np.where(sums > floor, sums, np.inf)).reshape(n, n_slices, roi * roi)
    # Interpolating between planes averages their noise, so an unsmoothed least-squares cost
    # dips at every half-plane shift; smoothing along z first makes the noise level
    # independent of the fractional shift (and a shift commutes with the smoothing).
    unit = ndimage.gaussian_filter1d(unit, _Z_REGISTRATION_SMOOTHING, axis=1, mode="nearest")
    m = max_z_shift
    core = np.arange(m, n_slices - m, dtype=np.float64)
    splines = [CubicSpline(np.arange(n_slices), unit[i], axis=0) for i in range(n)]
    sz = shifts[:, 0].copy()
    current = np.stack([splines[i](core + sz[i]) for i in range(n)])
    total = current.sum(axis=0)
    for _ in range(2):
        for i in range(n):
            reference = (total - current[i]) / (n - 1)
            block = core.astype(int)
            costs = [((unit[i][block + k] - reference) ** 2).sum() for k in range(-m, m + 1)]
            best = int(np.argmin(costs)) - m
            result = minimize_scalar(
                lambda s, i=i, reference=reference: ((splines[i](core + s) - reference) ** 2).sum(),
                bounds=(max(best - 1, -m), min(best + 1, m)),
                method="bounded",
                options={"xatol": 1e-4},
            )
            sz[i] = float(result.x)
            total -= current[i]
            current[i] = splines[i](core + sz[i])
            total += current[i]
    return sz - sz.mean()


def _centroid(image: np.ndarray, roi: int) -> np.ndarray:
    """Offset (y, x) of the centroid of the positive part within a disc, from the centre."""
    size = image.shape[0]
    coord = np.arange(size) - size // 2
    yy, xx = np.meshgrid(coord, coord, indexing="ij")
    centre = np.zeros(2)
    w = np.clip(image, 0, None)
    for _ in range(5):
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (roi / 2) ** 2
        weights = w * disc
        total = weights.sum()
        if total <= 0:
            break
        centre = np.array([(weights * yy).sum(), (weights * xx).sum()]) / total
    return centre


def _apply_shifts(crops: np.ndarray, shifts: np.ndarray, roi: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample each crop so its bead sits at the ROI centre; (n, T, S, S) and valid (n, T)."""
    n, n_slices, size, _ = crops.shape
    lo = (size - roi) // 2
    out = np.empty((n, n_slices, roi, roi))
    for i in range(n):
        moved = ndimage.shift(crops[i], -shifts[i], order=3, mode="nearest", prefilter=True)
        out[i] = moved[:, lo : lo + roi, lo : lo + roi]
    t = np.arange(n_slices)[None, :] + shifts[:, 0:1]
    valid = (t >= -0.5) & (t <= n_slices - 0.5)  # at most half a slice extrapolated
    return out, valid


# --------------------------------------------------------------------------------------------
# Normalisation and averaging
# --------------------------------------------------------------------------------------------


def _unit_energy(aligned: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide every plane of every bead by its sum; planes with too little light are invalid."""
    sums = aligned.sum(axis=(2, 3))
    reference = np.nanmedian(np.where(valid, sums, np.nan), axis=1, keepdims=True)
    valid = valid & (sums > 0.05 * reference)
    unit = aligned / np.where(valid, sums, 1.0)[:, :, None, None]
    return unit, valid


def _average(unit: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over beads of their valid planes.

    Returns the average (T, S, S), each bead's leave-one-out residual
    ``||bead - mean of the others|| / ||mean of the others||`` (n,), and the noise energy of
    each plane of the average, ``sum over pixels of var(beads) / count`` (T,), from the spread
    between beads (zero with a single bead).
    """
    w, total, count = _bead_sums(unit, valid)
    average = total / np.maximum(count, 1)
    spread = (((unit - average) ** 2) * w).sum(axis=0)
    noise = (spread / np.maximum(count * (count - 1), 1)).sum(axis=(1, 2))
    residuals = np.zeros(unit.shape[0])
    for i, (others, v) in enumerate(_leave_one_out(unit, valid)):
        diff = np.linalg.norm((unit[i] - others)[v])
        residuals[i] = diff / max(np.linalg.norm(others[v]), 1e-300)
    return average, residuals, noise


def _bead_sums(unit: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (n, T, 1, 1) of the valid planes, their sum over beads (T, S, S) and their
    count per plane (T, 1, 1)."""
    w = valid.astype(np.float64)[:, :, None, None]
    return w, (unit * w).sum(axis=0), w.sum(axis=0)


def _leave_one_out(
    unit: np.ndarray, valid: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each bead in turn, the mean of the other beads' valid planes (T, S, S) and the
    planes (T,) both the bead and the others have (none when no other bead has a plane).

    Planes no other bead has are copies of the nearest plane they have, never the bead's own
    (smoothing along z would carry it into the prediction of the bead's other planes).
    """
    w, total, count = _bead_sums(unit, valid)
    planes = np.arange(unit.shape[1])
    for i in range(len(unit)):
        rest = (count - w[i])[:, 0, 0]
        have = planes[rest > 0]
        if have.size == 0:
            yield np.zeros_like(total), np.zeros_like(valid[i])
            continue
        others = (total - unit[i] * w[i])[have] / rest[have, None, None]
        nearest = np.abs(planes[:, None] - have[None, :]).argmin(axis=1)
        yield others[nearest], valid[i] & (rest > 0)


@dataclass
class _Registration:
    """Registered beads: positions (y, x) of the crops, shifts (n, 3) = (z, y, x) in voxels,
    aligned ROIs (n, T, S, S) in photons, the same with every plane divided by its sum
    (``unit``), valid planes (n, T), the unit-energy average (T, S, S), its noise energy per
    plane (T,) and each bead's leave-one-out residual (n,)."""

    beads: list[tuple[int, int]]
    shifts: np.ndarray
    aligned: np.ndarray
    unit: np.ndarray
    valid: np.ndarray
    average: np.ndarray
    noise: np.ndarray
    residuals: np.ndarray


def _register_beads(
    photons: np.ndarray,
    beads: list[tuple[int, int]],
    *,
    roi: int,
    crop: int,
    max_z_shift: int,
    iterations: int,
    max_residual_ratio: float,
) -> tuple[_Registration, list[tuple[int, int]]]:
    """Register and average the beads; beads unlike the others are dropped and the rest
    registered again (an odd bead would bias the others' alignment). Returns the registration
    and the dropped beads."""
    crops = np.stack([_cut(photons, y, x, crop) for y, x in beads])
    dropped: list[tuple[int, int]] = []
    while True:
        shifts = _register(crops, roi, max_z_shift, iterations)
        aligned, valid = _apply_shifts(crops, shifts, roi)
        unit, valid = _unit_energy(aligned, valid)
        keep = _typical(unit, valid, max_residual_ratio)
        if keep.all():
            average, residuals, noise = _average(unit, valid)
            registration = _Registration(
                beads, shifts, aligned, unit, valid, average, noise, residuals
            )
            return registration, dropped
        dropped += [b for b, k in zip(beads, keep, strict=True) if not k]
        beads = [b for b, k in zip(beads, keep, strict=True) if k]
        crops = crops[keep]


def _typical(unit: np.ndarray, valid: np.ndarray, max_residual_ratio: float) -> np.ndarray:
    """Which beads (n,) look like the others (all of them when fewer than 3).

    A bead is unlike the others when its distance from the pixel-wise median of all beads
    (robust to the odd bead itself) exceeds `max_residual_ratio` times the median distance.
    """
    if len(unit) < 3:
        return np.ones(len(unit), dtype=bool)
    median = np.nanmedian(np.where(valid[:, :, None, None], unit, np.nan), axis=0)
    distance = np.array(
        [
            np.linalg.norm((u - median)[v]) / max(np.linalg.norm(median[v]), 1e-300)
            for u, v in zip(unit, valid, strict=True)
        ]
    )
    return distance <= max_residual_ratio * np.median(distance)


def _encircled_fraction(
    photons: np.ndarray,
    beads: list[tuple[int, int]],
    shifts: np.ndarray,
    roi: int,
    norm_size: int,
    spots: np.ndarray,
) -> tuple[np.ndarray, str]:
    """Fraction of each plane's photons inside the ROI (T,), and the description of the choice."""
    n_slices, height, width = photons.shape
    if norm_size <= roi:
        return np.ones(n_slices), "unit energy in the ROI"
    half = norm_size // 2
    t = np.arange(n_slices, dtype=np.float64)
    fractions = []
    for (y, x), shift in zip(beads, shifts, strict=True):
        if not (half <= y < height - half and half <= x < width - half):
            continue
        d = np.abs(spots - (y, x)).max(axis=1)
        if ((d > 0) & (d <= half + roi // 2)).any():
            continue
        inner = _cut(photons, y, x, roi).sum(axis=(1, 2))
        outer = _cut(photons, y, x, norm_size).sum(axis=(1, 2))
        ok = outer > 0.05 * np.median(outer)
        if ok.sum() < _MIN_SLICES:
            continue
        frac = np.interp(t + shift[0], t[ok], inner[ok] / outer[ok])
        fractions.append(frac)
    if not fractions:
        return np.ones(n_slices), "unit energy in the ROI"
    mean = np.mean(fractions, axis=0)
    window = min(n_slices if n_slices % 2 else n_slices - 1, 2 * (n_slices // 10) + 1)
    if window >= 5:
        mean = savgol_filter(mean, window, 2, mode="interp")
    mean = np.clip(mean, 1e-3, 1.0)
    return mean, f"encircled fraction (window {norm_size} px, {len(fractions)} beads)"


def _plane_change(average: np.ndarray, noise: np.ndarray) -> float:
    """Median relative change between adjacent planes, less the change noise alone makes.

    ``sqrt(max(||P[t+1] - P[t]||^2 - noise[t] - noise[t+1], 0)) / ||P[t]||``, so that a finely
    sampled but noisy stack is not mistaken for a coarse one.
    """
    diff2 = (np.diff(average, axis=0) ** 2).sum(axis=(1, 2))
    signal = np.sqrt(np.clip(diff2 - noise[:-1] - noise[1:], 0, None))
    norm = np.linalg.norm(average[:-1], axis=(1, 2))
    return float(np.median(signal / np.maximum(norm, 1e-300)))


def _smooth_z(stack: np.ndarray, length_nm: float, z_step_nm: float) -> np.ndarray:
    """Savitzky-Golay (cubic) smoothing along z over about `length_nm`; none below 5 slices."""
    return _savgol_z(stack, _z_window(length_nm, z_step_nm, stack.shape[0]))


def _z_window(length_nm: float, z_step_nm: float, n_slices: int) -> int:
    """Odd number of slices spanning about `length_nm`, at most the stack's (odd) length."""
    if not z_step_nm > 0:
        raise ValueError(f"z_step_nm must be positive here (rising z), got {z_step_nm}")
    window = round(length_nm / z_step_nm)
    return min(window + 1 - window % 2, n_slices - 1 + n_slices % 2)


def _savgol_z(stack: np.ndarray, window: int) -> np.ndarray:
    """Cubic Savitzky-Golay smoothing over `window` slices along axis 0; none below 5."""
    if window < 5:
        return stack.copy()
    return savgol_filter(stack, window, 3, axis=0, mode="interp")


def _choose_z_smoothing(
    unit: np.ndarray, valid: np.ndarray, fraction: np.ndarray, z_step_nm: float
) -> tuple[float, dict[float, float]]:
    """Smoothing length (nm) along z that best predicts each bead from the others.

    Parameters
    ----------
    unit : ndarray of shape (n, T, S, S)
        The registered beads, every plane divided by its sum.
    valid : ndarray of shape (n, T), bool
        Their valid planes.
    fraction : ndarray of shape (T,)
        The encircled fraction, which scales the average as in :func:`calibrate_beads`.
    z_step_nm : float
        Positive step between planes, nm.

    Returns
    -------
    float
        The length with the smallest summed squared error, over all beads and the planes
        they share with the others, between a bead and the smoothed mean of the others.
    dict of float to float
        Each candidate length -> its error relative to no smoothing's. Empty, with
        :data:`FALLBACK_Z_SMOOTHING_NM` as the length, for a single bead; empty, with 0, for
        a stack too short to smooth.
    """
    n, n_slices = valid.shape
    if n < 2:
        return FALLBACK_Z_SMOOTHING_NM, {}
    longest = _z_window(_Z_SMOOTHING_MAX_NM, z_step_nm, n_slices)
    if longest < 5:
        return 0.0, {}
    sizes = np.minimum(np.geomspace(5, longest, 16).round().astype(int) | 1, longest)
    windows = [0, *sorted({int(size) for size in sizes})]
    errors = np.zeros(len(windows))
    scale = fraction[:, None, None]
    for i, (others, scored) in enumerate(_leave_one_out(unit, valid)):
        target = (unit[i] * scale)[scored]
        predicted = others * scale
        for k, window in enumerate(windows):
            errors[k] += ((_savgol_z(predicted, window)[scored] - target) ** 2).sum()
    scores = {
        float(window * z_step_nm): float(e / max(errors[0], 1e-300))
        for window, e in zip(windows, errors, strict=True)
    }
    return float(windows[int(np.argmin(errors))] * z_step_nm), scores


def _fit_widths(measured: np.ndarray, z_nm: np.ndarray, notes: list[str]) -> AstigmaticFit | None:
    """Huang fit of the measured stack, or None (with a note) where it fails."""
    try:
        fit = fit_astigmatic(measured, z_nm)
    except DenselocError as exc:
        notes.append(str(exc))
        return None
    depth = fit.config.depth_nm
    lo, hi = _DEPTH_PLAUSIBLE_NM
    if not all(lo <= d <= hi for d in depth):
        message = (
            f"fitted focal depth ({depth[0]:.0f}, {depth[1]:.0f}) nm is outside the usual "
            f"{lo:g}-{hi:g} nm: check z_step_nm"
        )
        notes.append(message)
        warnings.warn(message, DenselocWarning, stacklevel=3)
    return fit
