"""Matplotlib figures written atomically (Agg backend: no display needed)."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
