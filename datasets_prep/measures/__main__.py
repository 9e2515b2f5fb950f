"""python -m datasets_prep.measures NAME [--datadir DIR] [--n N]: what a measure says of real data.

Prints the classifier's held-out accuracy, the reject's calibration, the controls table with
the floor at n beside it (docs/results.md), the outlier detector's rates and the nearest-source
share of the sets with outliers.
"""
import argparse

from datasets_prep import measures
from datasets_prep.measures import digits, mnist
from datasets_prep.measures.grey_images import REJECT_QUANTILE
from uot.errors import exit_on_usage_error

OUTLIER_SETS = {"digits": ("digits+outliers", "digits_train+shapes"), "fashion_mnist": ("fashion_mnist+mnist",)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=measures.MEASURES)
    parser.add_argument("--datadir", default=None, help="the data folder (mnist, fashion_mnist): python -m "
                        "datasets_prep.fetch puts the data there")
    parser.add_argument("--n", type=int, default=None, help="images per control set (default: the held-out "
                        "set's size for digits, the samples of a training save otherwise)")
    parser.add_argument("--draws", type=int, default=50000, help="N(0, I) draws of the nearest-source share")
    args = parser.parse_args(argv)
    measure = measures.measure(args.name, args.datadir)
    n = args.n or (digits.HELD_OUT if args.name == "digits" else measure.recipe.samples)
    print(f"{args.name}: classifier accuracy on the {len(measure.data.held_out)} held-out images "
          f"{measure.held_out_accuracy():.4f}")
    ref = measure.reference()
    print(f"reject: threshold {ref['threshold']:.3f} (the {REJECT_QUANTILE:.0%} quantile of the held-out images' "
          f"scores); false-reject rate on held-out images that did not set it: {ref['false_reject']:.3f}")
    print(measure.controls_table(n))
    if args.name == "digits":
        rates = digits.shape_detector_rates(measure)
    elif args.name == "fashion_mnist":
        rates = mnist.digit_detector_rates(measure, args.datadir)
    else:
        rates = {}
    for name, rate in rates.items():
        print(f"outlier detector: {name} {rate:.4f}")
    for dataset in OUTLIER_SETS.get(args.name, ()):
        share, outliers = measures.nearest_source_share(dataset, args.datadir, args.draws)
        print(f"{dataset}: {share:.4f} of {args.draws:,} N(0, I) draws have an outlier as nearest image; outliers "
              f"are {outliers:.4f} of the set ({share / outliers:.1f}x)")


if __name__ == "__main__":
    exit_on_usage_error(main)
