"""Write one split of CelebA-HQ to an LMDB.

    python -m datasets_prep.celeba_to_lmdb --hq_dir CelebA-HQ-img \\
        --mapping CelebA-HQ-to-CelebA-mapping.txt --partition list_eval_partition.txt \\
        --split train DST [--image_size 256]

The split of an HQ image is the CelebA partition (list_eval_partition.txt: 0 train,
1 val, 2 test) of the CelebA file it was made from (CelebAMask-HQ's mapping file).
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file path: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets_prep.images import CELEBA_PARTITION_IDS, celeba_hq_split_files  # noqa: E402
from datasets_prep.lmdb_dataset import write_image_lmdb  # noqa: E402
from uot.errors import exit_on_usage_error  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hq_dir", required=True,
                        help="CelebA-HQ images numbered 0.jpg.. (CelebAMask-HQ) or 00001.jpg.. (data256x256)")
    parser.add_argument("--mapping", required=True, help="CelebA-HQ-to-CelebA-mapping.txt (from CelebAMask-HQ)")
    parser.add_argument("--partition", required=True, help="list_eval_partition.txt (from CelebA)")
    parser.add_argument("--split", choices=tuple(CELEBA_PARTITION_IDS), default="train")
    parser.add_argument("dst", help="LMDB directory to create (must not exist)")
    parser.add_argument("--image_size", type=int, default=256, help="resize and center-crop to N x N")
    parser.add_argument("--encode", choices=("png", "raw"), default="png",
                        help="store PNG bytes, or raw HxWx3 uint8 bytes (faster to read, larger)")
    args = parser.parse_args(argv)
    paths = celeba_hq_split_files(args.hq_dir, args.mapping, args.partition, args.split)
    write_image_lmdb(args.dst, paths, args.image_size, args.encode)
    print(f"wrote the {len(paths)} CelebA-HQ {args.split} images to {args.dst}")


if __name__ == "__main__":
    exit_on_usage_error(main)
