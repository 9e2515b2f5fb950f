"""What the study scripts record about the machine, and how they summarise seeds."""
import argparse
import platform
import statistics


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), which every timing and study record names."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def mean_sd(values, fmt="{:.1f}"):
    """'mean +- sd' of the values that are not None (one value alone; 'n/a' for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} +- {fmt.format(statistics.stdev(values))}"


def study_parser(description, out):
    """The command line the study scripts share: where the runs go, how many at a time, which rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=out)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (default: all)")
    return parser


def chosen_rows(parser, names, rows):
    """The rows of `rows` named by --rows (all when None); an unknown name is a usage error."""
    unknown = set(names or []) - {row[0] for row in rows}
    if unknown:
        parser.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose from {', '.join(r[0] for r in rows)}")
    return [row for row in rows if names is None or row[0] in names]
