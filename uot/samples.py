"""Writing generated samples: image grids, and toy sample sets with their metrics and plots.

Both trainers save toy samples through `save_toy_samples`, so a run directory of
train.py (2-D toys) and one of train_toy.py (1-D toys) hold the same files:
samples_<n>.npz (source, target, generated, each (n, d), generated[i] = T(source[i], z_i))
and the plots of the data's dimension: scatter_<n>.png in 2-D, joint_<n>.png (T(x) against
x) and density_<n>.png (linear and log scale) in 1-D.
"""
import io
import math
import os

import numpy as np

from uot.io import atomic_savez, atomic_write_bytes
from uot.metrics import toy_metrics
from uot.plots import plot_1d, scatter_2d


def save_image_grid(images, path):
    """A square grid of images in [-1, 1], as a PNG written atomically."""
    from torchvision.utils import save_image
    buffer = io.BytesIO()
    save_image(images.float() * 0.5 + 0.5, buffer, format="png", nrow=int(math.sqrt(images.shape[0])))
    atomic_write_bytes(path, buffer.getvalue())


def save_toy_samples(directory, tag, source, target, generated, title, modes=None, outlier=None):
    """Write samples_<tag>.npz and the plots; return the toy metrics of `generated` against
    `target` (uot.metrics.toy_metrics: `modes` adds mode coverage, `outlier` the outlier
    fraction)."""
    source, target, generated = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t)
                                 for t in (source, target, generated))
    atomic_savez(os.path.join(directory, f"samples_{tag}.npz"), source=source, target=target, generated=generated)
    metrics = toy_metrics(generated, target, modes=modes, outlier=outlier)
    if "outlier_fraction" in metrics:
        title += f", outliers {100 * metrics['outlier_fraction']:.2f}%"
    if generated.shape[1] == 1:
        plot_1d(source, target, generated, title, os.path.join(directory, f"joint_{tag}.png"),
                os.path.join(directory, f"density_{tag}.png"))
    elif generated.shape[1] == 2:
        scatter_2d(target, generated, os.path.join(directory, f"scatter_{tag}.png"), title)
    return metrics
