"""Group localizations of the same emitter in consecutive frames (DESIGN section 4).

A fluorophore that stays on for several frames is localized once per frame. Grouping links
each localization to the nearest one of an open group in the previous frame(s) within a
lateral radius (and an axial one), one-to-one, nearest pairs first; each group becomes one
localization whose position is the inverse-variance (sigma^-2) weighted mean per axis.

The merged sigma depends on how the frames' errors are correlated. Independent errors give
``1 / sqrt(sum sigma_i^-2)``; a fitter that reads each frame alone has independent noise,
though biases shared by an emitter's frames (its z, its place within the pixel) still
correlate its errors. A network that
reads neighbouring frames as context has seen most of an emitter's light in every one of
its frames: the bundled model's errors in consecutive frames correlate with rho 0.85-0.90
in x, y and z (``benchmarks/results/grouping_bundled.md``), so grouping improves its
precision little, and the independent formula made merged sigmas 1.5-1.8 times too small.
With a correlation rho between every two frames of a group, the weighted mean has the variance
``(1 - rho) / W + rho (sum sigma_i^-1)^2 / W^2`` with ``W = sum sigma_i^-2`` (the first term
alone for rho = 0, the weighted mean of the sigmas, squared, for rho = 1).

Examples
--------
>>> import pandas as pd
>>> t = pd.DataFrame({"frame": [0, 1, 5], "x_nm": [100.0, 104.0, 900.0],
...                   "y_nm": [200.0, 198.0, 50.0], "sigma_x_nm": [10.0, 10.0, 10.0],
...                   "sigma_y_nm": [10.0, 10.0, 10.0], "sigma_z_nm": [20.0, 20.0, 20.0]})
>>> g = group_consecutive(t, radius_nm=50.0)
>>> g[["frame", "x_nm", "n_frames"]].to_numpy().tolist()
[[0.0, 102.0, 2.0], [5.0, 900.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from denseloc.localize.postprocess import SIGMA_AXES

__all__ = ["group_consecutive", "link_consecutive"]

CORRELATED_AXES = SIGMA_AXES


def _correlations(value: float | Mapping[str, float]) -> dict[str, float]:
    """Per-axis correlations in [0, 1] from one number or a mapping (missing axes 0)."""
    given = dict.fromkeys(CORRELATED_AXES, value) if isinstance(value, int | float) else value
    unknown = set(given) - set(CORRELATED_AXES)
    if unknown:
        raise ValueError(f"error_correlation for unknown axes {sorted(unknown)}; "
                         f"known: {', '.join(CORRELATED_AXES)}")
    out = {axis: float(given.get(axis, 0.0)) for axis in CORRELATED_AXES}
    for axis, rho in out.items():
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"error_correlation of {axis} must lie in [0, 1], got {rho}")
    return out


def link_consecutive(
    table: pd.DataFrame,
    *,
    radius_nm: float,
    radius_z_nm: float | None = None,
    max_gap_frames: int = 0,
) -> np.ndarray:
    """Group index of each row: rows of one emitter in consecutive frames share an index.

    Parameters
    ----------
    table : DataFrame
        Localization table (``frame``, ``x_nm``, ``y_nm``, ``z_nm``).
    radius_nm : float
        Largest lateral distance between a localization and the last one of its group.
    radius_z_nm : float, optional
        Largest axial distance (default: twice `radius_nm`).
    max_gap_frames : int
        Frames a group may skip (0: only strictly consecutive frames are linked).

    Returns
    -------
    ndarray of int64, shape (len(table),)
        Group indices, numbered in order of each group's first localization.
    """
    if radius_nm <= 0:
        raise ValueError(f"radius_nm must be > 0, got {radius_nm}")
    if max_gap_frames < 0:
        raise ValueError(f"max_gap_frames must be >= 0, got {max_gap_frames}")
    radius_z_nm = 2 * radius_nm if radius_z_nm is None else radius_z_nm
    order = np.argsort(table["frame"].to_numpy(), kind="stable")
    frame = table["frame"].to_numpy()[order]
    xy = table[["x_nm", "y_nm"]].to_numpy(dtype=float)[order]
    z = (table["z_nm"].to_numpy(dtype=float) if "z_nm" in table else np.zeros(len(table)))[order]
    group = np.full(len(table), -1, dtype=np.int64)
    # Open groups: the row of their latest member, and the frame of it.
    open_rows = np.empty(0, dtype=np.int64)
    n_groups = 0
    bounds = np.flatnonzero(np.diff(frame)) + 1
    for rows in np.split(np.arange(len(frame)), bounds):
        if not len(rows):
            continue
        f = frame[rows[0]]
        open_rows = open_rows[frame[open_rows] >= f - 1 - max_gap_frames]
        linked_new, linked_open = _nearest_pairs(
            xy[rows], z[rows], xy[open_rows], z[open_rows], radius_nm, radius_z_nm
        )
        group[rows[linked_new]] = group[open_rows[linked_open]]
        fresh = np.setdiff1d(np.arange(len(rows)), linked_new)
        group[rows[fresh]] = np.arange(n_groups, n_groups + len(fresh))
        n_groups += len(fresh)
        keep_open = np.setdiff1d(np.arange(len(open_rows)), linked_open)
        open_rows = np.concatenate([open_rows[keep_open], rows])
    out = np.empty_like(group)
    out[order] = group
    return out


def _nearest_pairs(xy_new, z_new, xy_old, z_old, radius, radius_z):
    """One-to-one pairs within the radii, nearest first (greedy)."""
    if not len(xy_new) or not len(xy_old):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    dist = cKDTree(xy_old).sparse_distance_matrix(cKDTree(xy_new), radius, output_type="coo_matrix")
    old, new, d = dist.row, dist.col, dist.data
    ok = np.abs(z_old[old] - z_new[new]) <= radius_z
    old, new, d = old[ok], new[ok], d[ok]
    used_old, used_new, pairs_new, pairs_old = set(), set(), [], []
    for i in np.argsort(d, kind="stable"):
        if old[i] in used_old or new[i] in used_new:
            continue
        used_old.add(old[i])
        used_new.add(new[i])
        pairs_new.append(new[i])
        pairs_old.append(old[i])
    return np.asarray(pairs_new, dtype=np.int64), np.asarray(pairs_old, dtype=np.int64)


def group_consecutive(
    table: pd.DataFrame,
    *,
    radius_nm: float = 50.0,
    radius_z_nm: float | None = None,
    max_gap_frames: int = 0,
    error_correlation: float | Mapping[str, float] = 0.0,
) -> pd.DataFrame:
    """Merge the localizations of one emitter in consecutive frames into one.

    Positions are averaged per axis with weights ``sigma^-2`` (equal weights when the table has
    no sigma columns, or for a group with a missing sigma on that axis, whose merged sigma is
    then NaN), and their sigmas combined as the module docstring says; photons are summed
    (``sigma_photons`` of the sum with the same correlation); ``bg`` is averaged and ``p`` is
    the largest. ``frame`` is the group's first frame; ``n_frames`` counts its localizations.

    `error_correlation` is the correlation of the errors of one emitter's localizations in
    two frames of a group, 0 (independent, the default) to 1: one number, or one per axis
    (``x``, ``y``, ``z``, ``photons``; missing axes 0). Network models record theirs, per
    readout, as ``frame_error_correlation``. See :func:`link_consecutive` for the other parameters.
    """
    from denseloc.table import validate

    table = validate(table)
    rho = _correlations(error_correlation)
    if table.empty:
        return table.assign(n_frames=np.zeros(0, dtype=np.int64))
    group = link_consecutive(
        table, radius_nm=radius_nm, radius_z_nm=radius_z_nm, max_gap_frames=max_gap_frames
    )
    n_groups = int(group.max()) + 1
    count = np.bincount(group, minlength=n_groups)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=values, minlength=n_groups)

    out = {"frame": np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)}
    np.minimum.at(out["frame"], group, table["frame"].to_numpy())
    for axis in "xyz":
        position = table[f"{axis}_nm"].to_numpy(dtype=float)
        sigma_col = f"sigma_{axis}_nm"
        mean = total(position) / count
        if sigma_col in table:
            sigma = table[sigma_col].to_numpy(dtype=float)
            usable = np.isfinite(sigma) & (sigma > 0)  # NaN: e.g. z of a 2D PSF fit
            weight = np.where(usable, sigma, 1.0) ** -2.0 * usable
            all_usable = total(~usable) == 0
            with np.errstate(divide="ignore", invalid="ignore"):  # groups with no weight
                w = total(weight)
                out[f"{axis}_nm"] = np.where(all_usable, total(weight * position) / w, mean)
                inverse = total(np.where(usable, 1.0 / np.where(usable, sigma, 1.0), 0.0))
                variance = (1 - rho[axis]) / w + rho[axis] * (inverse / w) ** 2
                out[sigma_col] = np.where(all_usable, np.sqrt(variance), np.nan)
        else:
            out[f"{axis}_nm"] = mean
    if "photons" in table:
        out["photons"] = total(table["photons"].to_numpy(dtype=float))
    if "sigma_photons" in table:  # var(sum) = (1 - rho) sum sigma^2 + rho (sum sigma)^2
        sigma = table["sigma_photons"].to_numpy(dtype=float)
        r = rho["photons"]
        out["sigma_photons"] = np.sqrt((1 - r) * total(sigma**2) + r * total(sigma) ** 2)
    if "bg" in table:
        out["bg"] = total(table["bg"].to_numpy(dtype=float)) / count
    if "p" in table:
        p = np.zeros(n_groups)
        np.maximum.at(p, group, table["p"].to_numpy(dtype=float))
        out["p"] = p
    out["n_frames"] = count
    merged = pd.DataFrame(out).sort_values("frame", kind="stable", ignore_index=True)
    merged.attrs = dict(table.attrs)
    return validate(merged, name="grouped localizations")
