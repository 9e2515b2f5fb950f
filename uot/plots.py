"""Matplotlib figures written atomically (Agg backend: no display needed)."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uot.io import atomic_write_bytes  # noqa: E402


def save_figure(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def draw_scatter_2d(ax, target, generated, title=""):
    """Target and generated 2-D points, on the same axes `ax` (one panel of a figure)."""
    ax.scatter(target[:, 0], target[:, 1], s=2, alpha=0.4, c="tab:blue", label="target")
    ax.scatter(generated[:, 0], generated[:, 1], s=2, alpha=0.4, c="tab:orange", label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=5)
    ax.set_title(title)


def scatter_2d(target, generated, path, title=""):
    """A one-panel figure of draw_scatter_2d, written to `path`."""
    fig, ax = plt.subplots(figsize=(5, 5))
    draw_scatter_2d(ax, target, generated, title)
    save_figure(fig, path)


def plot_1d(source, target, generated, title, joint_path, density_path):
    """1-D toys: T(x, z) against x (joint_path), and the target and generated densities
    (histogram + KDE) on a linear and a log scale (density_path; the log one shows a 1% mode)."""
    from scipy.stats import gaussian_kde

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(source[:, 0], generated[:, 0], s=2, alpha=0.3)
    ax.set(xlabel="source x", ylabel="T(x, z)", title=title)
    save_figure(fig, joint_path)

    lo = min(target.min(), generated.min()) - 0.5
    hi = max(target.max(), generated.max()) + 0.5
    grid = np.linspace(lo, hi, 600)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, log in zip(axes, (False, True)):
        peak = 0.0
        for data, label, color in ((target, "target", "tab:gray"), (generated, "generated", "tab:blue")):
            heights = ax.hist(data[:, 0], bins=120, range=(lo, hi), density=True, color=color, alpha=0.35,
                              label=label)[0]
            ax.plot(grid, gaussian_kde(data[:, 0])(grid), color=color, lw=1.5)
            peak = max(peak, heights.max())
        ax.set(xlabel="y", ylabel="density (log scale)" if log else "density", xlim=(lo, hi))
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 2 * peak)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, density_path)
