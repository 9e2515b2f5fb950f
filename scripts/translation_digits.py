"""The measured outcome of a digits0-4to5-9 run (scripts/digits_translation.sh), and its figure.

    python scripts/translation_digits.py train_logs/digits0-4to5-9/sjko_kl --out assets/translation_digits.png

Maps the 180 held-out source digits (classes 0-4) with the run's last netG_<n>.pth and prints
a markdown table of datasets_prep.translation's measures (the digits classifier's share of
images in 5-9, target_fd, the transport cost) beside three references that need no training:
the sources themselves, the 179 held-out target digits (the target's own level; the cost pairs
them with the sources at random), and each source's nearest target training digit in pixels
(the cheapest way into 5-9). Then the
classes: for each source class, the share of its images the classifier puts in each class.
The figure: 32 sources, each row followed by the row of their images (4x nearest upscaling).
"""
import argparse
import glob
import json
import os
import re

import torch
import torch.nn.functional as F

from datasets_prep.measures import measure
from datasets_prep.translation import (SOURCE_CLASSES, beside_sources, source_images, target_images,
                                       to_model_input, translation_metrics)
from score_sde import build_generator
from uot.samples import save_image_grid

NAME = "digits0-4to5-9"


def last_generator(run_dir):
    """The run's generator with the weights of its newest netG_<n>.pth, and n."""
    with open(os.path.join(run_dir, "options.json")) as f:
        cfg = argparse.Namespace(**json.load(f))
    saves = {int(re.findall(r"netG_(\d+)\.pth$", p)[0]): p for p in glob.glob(os.path.join(run_dir, "netG_*.pth"))}
    G = build_generator(cfg)
    G.load_state_dict(torch.load(saves[max(saves)], map_location="cpu", weights_only=True))
    return G.eval(), cfg, max(saves)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default="assets/translation_digits.png")
    a = p.parse_args()
    G, cfg, step = last_generator(a.run_dir)
    test = source_images(NAME, None, cfg.image_size, "test")
    sources, labels = to_model_input(test), test.labels
    with torch.no_grad():
        images = G(sources, torch.randn(len(sources), cfg.nz, generator=torch.Generator().manual_seed(cfg.seed)))
    targets = to_model_input(target_images(NAME, None, cfg.image_size))
    held_out = to_model_input(target_images(NAME, None, cfg.image_size, "test"))
    nearest = targets[torch.cdist(sources.flatten(1), targets.flatten(1)).argmin(1)]
    rows = {f"the run, step {step}": images, "sources themselves": sources,
            "held-out target digits, paired at random": held_out, "nearest target digit (pixels)": nearest}
    print("| images | share in 5-9 | target_fd | transport cost |")
    print("|---|---|---|---|")
    for what, x in rows.items():
        m = translation_metrics(NAME, sources[:len(x)], x)
        print(f"| {what} | {m['target_class_share']:.3f} | {m['target_fd']:.1f} | {m['transport_cost']:.3f} |")
    classes = measure("digits").predicted_classes(images)
    print("\n| source class | n | " + " | ".join(f"-> {c}" for c in range(10)) + " |")
    print("|---|---|" + "---|" * 10)
    for c in SOURCE_CLASSES:
        got = classes[labels == c]
        share = torch.bincount(got, minlength=10).float() / len(got)
        print(f"| {c} | {len(got)} | " + " | ".join(f"{s:.2f}" for s in share.tolist()) + " |")
    tiles = F.interpolate(beside_sources(sources, images), scale_factor=4, mode="nearest")
    save_image_grid(tiles, a.out)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
