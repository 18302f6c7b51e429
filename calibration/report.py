"""PNG plots of calibration residuals, so a bad sample or view stands out at a glance."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _save(fig, path: Path) -> None:
    from firmware_bridge.atomic_file import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)


def plot_handeye(result, path: str | Path) -> Path:
    """Per-sample bars: board-consistency rotation/translation, reprojection RMS, leave-one-out shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = result.names
    x = np.arange(len(names))
    panels = [
        (result.rot_residual_deg, "rotation residual (deg)"),
        (result.trans_residual_mm, "translation residual (mm)"),
        (result.reproj_rms_px, "reprojection RMS (px)"),
    ]
    if len(result.loo_trans_mm):
        panels.append((result.loo_trans_mm, "leave-one-out shift of X (mm)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.45 * len(names) + 2), 2.2 * len(panels)), sharex=True)
    for ax, (vals, label) in zip(np.atleast_1d(axes), panels):
        ax.bar(x, np.nan_to_num(vals), color="tab:blue")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[-1].set_xticks(x)
    np.atleast_1d(axes)[-1].set_xticklabels(names, rotation=60, fontsize=7)
    fig.suptitle(f"hand-eye {result.mode}: {result.method}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_intrinsics(names: Sequence[str], errors: Sequence[float], rejected: Sequence[bool], path: str | Path,
                    coverage: np.ndarray | None = None) -> Path:
    """Per-view reprojection error (rejected views in red) and the corner-coverage grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ncols = 2 if coverage is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols + 2, 3.5))
    axes = np.atleast_1d(axes)
    colors = ["tab:red" if r else "tab:blue" for r in rejected]
    axes[0].bar(np.arange(len(names)), errors, color=colors)
    axes[0].set_xticks(np.arange(len(names)))
    axes[0].set_xticklabels(names, rotation=60, fontsize=7)
    axes[0].set_ylabel("reprojection RMS (px)")
    axes[0].set_title("per view (red: rejected)", fontsize=9)
    if coverage is not None:
        axes[1].imshow(coverage, cmap="Greens", vmin=0)
        axes[1].set_title("corners per image cell", fontsize=9)
        axes[1].set_xticks([])
        axes[1].set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
