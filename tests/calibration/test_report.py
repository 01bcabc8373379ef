"""Tests of the calibration report figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from denseloc.calibration.beads import BeadCalibration
from denseloc.calibration.report import _widths_figure, write_report
from denseloc.calibration.spline import CubicSplinePSF, psf_stack_from_model
from denseloc.errors import DenselocError
from denseloc.sim.psf import AstigmaticPSF


def _calibration() -> BeadCalibration:
    """A calibration result built directly from a model stack (no Huang fit)."""
    z_nm = np.arange(-300.0, 301.0, 50.0)
    stack = psf_stack_from_model(
        AstigmaticPSF((1.2, 1.3), (-100.0, 100.0), (300.0, 300.0)), z_nm, 15
    ).numpy()
    psf = CubicSplinePSF.from_stack(stack, 50.0, pixel_size_nm=100.0)
    return BeadCalibration(
        psf=psf,
        measured=stack,
        model=stack * 1.01,
        z_nm=z_nm,
        encircled_fraction=stack.sum(axis=(1, 2)),
        beads=[],
        rejected=[],
        relative_residual=0.01,
        bead_residual=0.05,
        astigmatic=None,
        z_step_nm=50.0,
        pixel_size_nm=100.0,
        reference_slice=6.0,
        normalisation="unit energy in the ROI",
        z_smoothing_nm=0.0,
        source="model",
    )


def test_report_writes_pngs_atomically(tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_report(_calibration(), out)
    assert [p.name for p in written] == ["psf_sections.png", "psf_planes.png", "psf_widths.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    # with the cross-validation's errors of each smoothing length along z
    chosen = dataclasses.replace(
        _calibration(), z_smoothing_nm=150.0, z_smoothing_scores={0.0: 1.0, 150.0: 0.9}
    )
    axes = _widths_figure(chosen).axes[2]
    np.testing.assert_array_equal(axes.lines[0].get_xdata(), [0.0, 150.0])
    np.testing.assert_array_equal(axes.lines[0].get_ydata(), [1.0, 0.9])
    assert axes.lines[1].get_xdata()[0] == 150.0 and "150 nm" in axes.get_title()


def test_report_refuses_a_file_as_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DenselocError, match="not a folder"):
        write_report(_calibration(), target)
