"""Read every image of a prepared dataset and report what the trainer will get.

    python -m datasets_prep.check_dataset --dataset NAME --datadir ROOT [--image_size N]

Prints the count, shape, dtype, value range and labels. Exit code 0 when every image
reads, 2 with the offending file (or missing file) named otherwise.
"""
import argparse

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets_prep.catalog import IMAGE_DATASETS, dataset_info, default_image_size
from datasets_prep.images import build_image_dataset
from uot.errors import UsageError, exit_on_usage_error


def check_dataset(dataset, num_channels, image_size, batch_size=256, num_workers=0):
    """Read every item; return (count, min, max, sorted labels). Raises UsageError on a bad one."""
    count, low, high, labels = 0, 255, 0, set()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, batch_labels in tqdm(loader, desc="reading", unit="batch", disable=len(dataset) < 10_000):
        if images.dtype != torch.uint8 or images.shape[1:] != (num_channels, image_size, image_size):
            raise UsageError(f"items {count}.. are {images.dtype} {tuple(images.shape[1:])}, expected "
                             f"uint8 {(num_channels, image_size, image_size)}")
        count += len(images)
        low, high = min(low, int(images.min())), max(high, int(images.max()))
        labels.update(batch_labels.tolist())
    return count, low, high, sorted(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=IMAGE_DATASETS)
    parser.add_argument("--datadir", default=None, help="the folder given to train.py --datadir")
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: the size train.py uses for the dataset (required for imagefolder)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--download", action="store_true", help="let torchvision download mnist/cifar10")
    parser.add_argument("--num_workers", type=int, default=0)
    args = parser.parse_args(argv)
    image_size = default_image_size(args.dataset, args.image_size)
    dataset = build_image_dataset(args.dataset, args.datadir, image_size, args.split, args.download)
    channels = dataset_info(args.dataset).channels
    count, low, high, labels = check_dataset(dataset, channels, image_size, num_workers=args.num_workers)
    shown = labels if len(labels) <= 12 else f"{labels[0]}..{labels[-1]} ({len(labels)} values)"
    print(f"{args.dataset} {args.split}: {count} images, shape {channels}x{image_size}x{image_size}, "
          f"dtype uint8, min {low}, max {high}, labels {shown}")


if __name__ == "__main__":
    exit_on_usage_error(main)
