"""Evaluate a trained generator: FID (and optionally improved precision/recall).

  python test.py train_logs/cifar10/kl                  # newest netG_<epoch>.pth of the run
  python test.py RUN/netG_600.pth --ref_stats pytorch_fid/cifar10_train_32.npz
  torchrun --nproc_per_node 4 test.py RUN               # each GPU draws its share
  python test.py --compute_stats cifar10 --datadir data/cifar10   # -> pytorch_fid/cifar10_train_32.npz

Samples stay in memory as uint8, rounded exactly as a PNG would store them, and go
straight through pytorch-fid's Inception. Every evaluation prints one line and appends
a record to fid.jsonl in the checkpoint's directory.
"""
import argparse
import datetime
import json
import os
import re
import time

import torch

from datasets_prep import default_image_size, translation
from datasets_prep.reference import is_image_folder, reference_dataset, reference_stats_path
from score_sde import build_generator, source_shape
from uot import dist as udist
from uot import fid
from uot.cli import ArgumentParser
from uot.errors import UsageError, exit_on_usage_error
from uot.io import RecordLog, load_checkpoint

ROOT = os.path.dirname(os.path.abspath(__file__))
NETG_FILE = re.compile(r"netG_(\d+)\.pth")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?",
                        help="run directory (newest netG_<epoch>.pth, else content.pth) or a .pth file")
    parser.add_argument("--options", help="the run's options.json (default: next to the checkpoint)")
    parser.add_argument("--num_samples", type=int, default=50000, help="generated samples (all GPUs)")
    parser.add_argument("--batch_size", type=int, default=500, help="per process, sampling and Inception")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--ref_stats", metavar="FILE",
                     help="reference statistics: an npz with mu and sigma, or a public repository's "
                          "*_stat.npy (a pickled {'mu', 'sigma'} dict, read without running anything from it)")
    ref.add_argument("--ref_dir", metavar="DATASET_OR_FOLDER",
                     help="reference images: a dataset name or an image folder; their statistics are "
                          "cached in --stats_dir (default: the run's dataset)")
    parser.add_argument("--datadir", help="dataset root for --ref_dir / --compute_stats "
                                          "(default: the run's --datadir)")
    parser.add_argument("--stats_dir", default=os.path.join(ROOT, "pytorch_fid"),
                        help="where reference statistics are cached and written")
    parser.add_argument("--inception_weights", metavar="PATH",
                        help="local pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save_samples", metavar="DIR", help="also write the samples as PNGs")
    parser.add_argument("--precision_recall", action="store_true",
                        help="improved precision/recall (k=3) on the same Inception features")
    parser.add_argument("--compute_stats", metavar="DATASET",
                        help="write the training-split statistics of DATASET (or a folder) to "
                             "--stats_dir and exit")
    parser.add_argument("--image_size", type=int,
                        help="image size for --compute_stats (default: the size train.py uses for the dataset)")
    parser.add_argument("--num_workers", type=int, default=4, help="data loader workers")
    args = parser.parse_args(argv)
    if args.compute_stats is None and args.checkpoint is None:
        parser.error("give a run directory or checkpoint, or --compute_stats DATASET")
    if args.num_samples < 2 or args.batch_size < 1:
        raise UsageError("--num_samples must be at least 2 and --batch_size at least 1")
    return args


def find_checkpoint(path):
    """The .pth to evaluate: `path` itself, or the newest netG_<epoch>.pth / content.pth in it."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise UsageError(f"checkpoint {path}: no such file or directory")
    epochs = {int(m.group(1)): name for name in os.listdir(path) if (m := NETG_FILE.fullmatch(name))}
    if epochs:
        return os.path.join(path, epochs[max(epochs)])
    if os.path.isfile(os.path.join(path, "content.pth")):
        return os.path.join(path, "content.pth")
    raise UsageError(f"{path} holds no netG_<epoch>.pth and no content.pth")


def generator_state(path, cfg):
    """(state dict, where the run was). train.py writes two kinds: netG_<n>.pth, the weights of
    the generator to evaluate (the EMA when the run keeps one) at epoch n (UOTM mode) or
    iteration n (S-JKO mode); and content.pth, the run state, whose G_ema (G without EMA) is
    evaluated, at its step."""
    try:
        checkpoint = load_checkpoint(path)
    except Exception as err:
        raise UsageError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path} is neither a netG_<n>.pth nor a content.pth of train.py")
    if "G" in checkpoint and "step" in checkpoint:
        state = checkpoint["G_ema"] if checkpoint.get("G_ema") is not None else checkpoint["G"]
        return state, {"step": checkpoint["step"]}
    match = NETG_FILE.fullmatch(os.path.basename(path))
    unit = "epoch" if getattr(cfg, "mode", "uotm") == "uotm" else "step"
    return checkpoint, ({unit: int(match.group(1))} if match else {})


def read_options(path):
    if not os.path.isfile(path):
        raise UsageError(f"options file {path} not found: pass --options PATH (the run's options.json)")
    with open(path, encoding="utf-8") as f:
        cfg = argparse.Namespace(**json.load(f))
    if cfg.model_name == "toy":
        raise UsageError(f"{path}: FID needs an image model, not --model_name toy")
    if cfg.dataset in translation.TRANSLATIONS:   # its map takes source images, not N(0, I)
        raise UsageError(f"{path}: --dataset {cfg.dataset} is a translation, whose map takes the source's images, "
                         f"not noise; test.py measures generators from noise (the run's metrics.json holds its "
                         f"translation measures)")
    return cfg


def load_generator(checkpoint_path, cfg, options_path, device):
    state, where = generator_state(checkpoint_path, cfg)
    G = build_generator(cfg)
    try:
        G.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UsageError(f"{checkpoint_path} does not fit the generator of {options_path}: {detail}") from None
    return G.to(device).eval(), where


def reference(args, cfg, inception, device):
    """(mu, sigma, real features or None, name of the reference); mu/sigma only on rank 0."""
    if args.ref_stats is not None:
        if args.precision_recall:
            raise UsageError("--precision_recall needs reference images: use --ref_dir instead of --ref_stats")
        return *fid.load_stats(args.ref_stats), None, args.ref_stats
    source = args.ref_dir or cfg.dataset
    path = reference_stats_path(source, cfg.image_size, args.stats_dir)
    if os.path.isfile(path) and not args.precision_recall:
        return *fid.load_stats(path), None, path
    dataset = reference_dataset(source, cfg.image_size, args.datadir or getattr(cfg, "datadir", None))
    features = fid.dataset_features(dataset, inception, args.batch_size, device, args.num_workers)
    if udist.rank() != 0:
        return None, None, features, path
    mu, sigma = fid.statistics(features)
    if not os.path.isfile(path):
        fid.save_stats(path, mu, sigma, len(features))
        print(f"cached the statistics of {len(features)} reference images in {path}", flush=True)
    return mu, sigma, features, path


def compute_stats(args, device):
    start = time.time()
    source = args.compute_stats
    if is_image_folder(source) and args.image_size is None:
        raise UsageError(f"--compute_stats {source}: a folder of images needs --image_size N")
    image_size = args.image_size or default_image_size(source)
    path = reference_stats_path(source, image_size, args.stats_dir)
    dataset = reference_dataset(source, image_size, args.datadir)
    inception = fid.load_inception(args.inception_weights, device)
    features = fid.dataset_features(dataset, inception, args.batch_size, device, args.num_workers)
    if udist.rank() == 0:
        fid.save_stats(path, *fid.statistics(features), len(features))
        print(f"wrote {path}: {len(features)} images, {time.time() - start:.1f}s", flush=True)


def evaluate(args, device):
    start = time.time()
    checkpoint = os.path.abspath(find_checkpoint(args.checkpoint))
    run_dir = os.path.dirname(checkpoint)
    options_path = args.options or os.path.join(run_dir, "options.json")
    cfg = read_options(options_path)
    G, where = load_generator(checkpoint, cfg, options_path, device)
    inception = fid.load_inception(args.inception_weights, device)
    mu_ref, sigma_ref, real_features, ref_name = reference(args, cfg, inception, device)
    features = fid.generator_features(
        G, args.num_samples, args.batch_size, source_shape(cfg), cfg.nz, device, seed=args.seed, inception=inception, save_dir=args.save_samples)
    if udist.rank() != 0:
        return
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record = {"fid": fid.frechet_distance(*fid.statistics(features), mu_ref, sigma_ref),
              "num_samples": len(features), "checkpoint": checkpoint, **where,
              "seed": args.seed, "ref": os.path.abspath(ref_name),
              "device": f"{device_name} x{udist.world_size()}", "batch_size": args.batch_size,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    line = f"FID {record['fid']:.4f}  n={len(features)}  checkpoint={checkpoint}"
    if args.precision_recall:
        record["precision"], record["recall"] = fid.precision_recall(real_features, features,
                                                                     device=device)
        line += f"  precision={record['precision']:.4f}  recall={record['recall']:.4f}"
    record["seconds"] = round(time.time() - start, 2)
    RecordLog(os.path.join(run_dir, "fid.jsonl")).append(record)
    print(f"{line}  {record['seconds']:.1f}s", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no GPU is visible; pass --device cpu")
    _, _, local_rank = udist.init_distributed(args.device)
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions: features as exact as on CPU
    try:
        if args.compute_stats:
            compute_stats(args, device)
        else:
            evaluate(args, device)
    finally:
        udist.cleanup()


if __name__ == "__main__":
    exit_on_usage_error(main)
