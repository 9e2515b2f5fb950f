"""Write a folder of images (searched recursively, in sorted order) to an LMDB.

    python -m datasets_prep.folder_to_lmdb SRC DST [--image_size N] [--encode png|raw]

The LMDB layout is the one datasets_prep/lmdb_dataset.py reads (NVAE / DDGAN style).
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file path: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets_prep.image_io import IMAGE_EXTENSIONS, list_image_files  # noqa: E402
from datasets_prep.lmdb_dataset import write_image_lmdb  # noqa: E402
from uot.errors import exit_on_usage_error  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help=f"folder of {'/'.join(IMAGE_EXTENSIONS)} images (searched recursively)")
    parser.add_argument("dst", help="LMDB directory to create (must not exist)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="resize the shorter side to N and center-crop to N x N (default: keep the size)")
    parser.add_argument("--encode", choices=("png", "raw"), default="png",
                        help="store PNG bytes, or raw HxWx3 uint8 bytes (square images only; faster to read)")
    args = parser.parse_args(argv)
    paths = list_image_files(args.src)
    write_image_lmdb(args.dst, paths, args.image_size, args.encode)
    print(f"wrote {len(paths)} images to {args.dst}")


if __name__ == "__main__":
    exit_on_usage_error(main)
