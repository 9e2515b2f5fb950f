"""The course report's table on MNIST and the UOTM paper's outlier experiment on Fashion-MNIST
with 1% MNIST digits, multi-seed, at CPU scale, in one resumable command.

    python -m datasets_prep.fetch mnist fashion_mnist --datadir data     # once
    python scripts/study_mnist.py --datadir data [--out train_logs/study_mnist] [--jobs 2] [--rows NAME ...]
    python scripts/study_mnist.py --table assets/study_mnist_runs.jsonl \
        --best assets/study_mnist_best_saves.jsonl                       # the page's tables from the records

Every run but stage 3's trains plain MLPs on the flattened 32 px images (scripts/mnist_mlp.flags:
3 hidden layers of 256, batch 128, cosine decay, R1 0.2, EMA 0.999, tau 0.003) for EPOCHS epochs
and measures 2,000 samples of its evaluated map every SAVE_EVERY epochs (datasets_prep.measures:
mnist_fd or fashion_mnist_fd, precision, recall, ...; the run's floor.json holds the same
measures of 2,000 held-out test images). Six stages, one after the other:

 -1. the probes that chose those shared settings, recorded like every run;
  0. tuning, the same budget for every method: the learning rate (both networks) of the GAN,
     UOTM (kl, kl) and OTM, each at every value of LEARNING_RATES, one seed (TUNING_SEED, not a
     seed of the later stages). A method's chosen rate is the one whose run ends with the lowest
     mnist_fd; the later stages read it from the records, and the table names it. The divergence
     rule, the same for every method: when the method's main row (MAIN) diverges on a majority of
     SEEDS at its chosen rate, the rate is abandoned and every row of the method runs at the
     next rate of its tuning ranking (its rows keep differing in one thing only); the runs at
     the abandoned rate stay in the records and tables as rows `<row>_lr<rate>`. A stage is run
     again while the rule changes a rate, so from scratch a method's rows first run all their
     seeds at its best rate.
  1. the course report's rows on MNIST, 5 seeds: the non-saturating GAN, UOTM (kl, kl) with and
     without EMA, UOTM (softplus, softplus), OTM;
  2. the UOTM paper's outlier experiment on fashion_mnist+mnist (60,000 Fashion-MNIST images and
     606 MNIST digits, 1%), 5 seeds: UOTM (kl, kl) against OTM, with UOTM trained on
     fashion_mnist alone as the control of the digit detector's false positives. The share of
     N(0, I) draws whose nearest training image is a digit (datasets_prep.measures.
     nearest_source_share) is recorded with every run of the outlier set: a comparison of
     outlier shares is fair when it is at most twice the digits' share of the data.
  3. the papers' network: UOTM (kl, kl) with NCSN++ (NCSNPP: the public `--dataset mnist`
     network, reduced by measurement to fit 2 hours of one core), one seed, at UOTM's rate.
  4. the outlier experiment again, on new seeds (CONFIRM_SEEDS), for the best-save rule. Declared
     on 2026-12-03 after stages 1-2 were seen (OTM's curves turn up after their best save, so the
     slope rule leaves its comparisons without a verdict) and before any run of stage 4:

     The best-save rule (BEST_SAVE). For every run of BEST_SAVE_ROWS, the save with the lowest
     recorded fd (fashion_mnist_fd; the earlier on a tie) is selected, and its netG_<epoch>.pth
     draws 2,000 new samples (noise seeded with the run's seed + EVAL_SEED_OFFSET, never the
     noise of the saves) that are measured again; best_saves.jsonl records them. The selection
     reads one sample set and the comparison another, so the choice of the save does not bias
     the compared values. The comparisons of BEST_SAVE_COMPARISONS are Welch tests of these
     values on stage 4's rows, Holm-adjusted together with every other comparison of the page;
     "held"/"contradicted" when the adjusted p < 0.05 and each row is converged by the slope rule
     or past its best save (the selected save before the last) on a majority of its seeds.
     Stages 1-2's runs are shown under the same rule as the exploration that suggested it,
     without verdicts.

`--jobs` runs at a time with one torch thread each; a finished run is never run again and a run
killed midway continues from its content.pth (--resume auto). Outputs: runs.jsonl (one record
per run: row, seed, flags, exit code, seconds, CPU, versions, every save's measures, the run's
floor), best_saves.jsonl (stage 4's rule: one record per run of BEST_SAVE_ROWS, measured after
the runs), results.md (the tables and comparisons: scripts/study_digits.py's rules of evidence,
uot/study.py), samples.png (each row's first seed) and curves.png (per save, against the floor).
"""
import json
import os
import shlex

from uot import study
from uot.io import RecordLog, atomic_write_text
from uot.records import chosen_rows, mean_sd, study_parser
from uot.study import final

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(SCRIPTS, "mnist_mlp.flags"), encoding="utf-8") as f:
    MLP = f.read().strip()
EPOCHS, SAVE_EVERY = 24, 2
LEARNING_RATES = (1e-3, 4e-4)
TUNING_SEED = 100
SEEDS = tuple(range(5))
CONFIRM_SEEDS = tuple(range(5, 10))   # stage 4's: new seeds for the best-save rule's verdicts
METHODS = {"gan": "--loss gan", "uotm": "--phi1 kl --phi2 kl", "otm": "--phi1 linear --phi2 linear"}
MAIN = {"gan": "gan", "uotm": "uotm_kl", "otm": "otm"}   # the row whose divergences decide a method's rate
OUTLIER_SET = "fashion_mnist+mnist"

# stage 3: NCSN++ as the public `--dataset mnist` builds it (32 px, one channel, its residual
# potential), reduced to fit 2 hours of one core: 16 channels instead of 64 (ch_mult 1 2 2, one
# res block, attention at 8 px) and a potential of ngf 8; 1.45 s an iteration at batch 64 on one
# core (docs/performance.md), so 4 epochs of 937 iterations, a save each
NCSNPP_EPOCHS = 4
NCSNPP = ("--model_name ncsnpp --image_size 32 --num_channels_dae 16 --ch_mult 1 2 2 --num_res_blocks 1 "
          "--attn_resolutions 8 --ngf 8 --n_mlp 2 --z_emb_dim 64 --batch_size 64 "
          f"--num_epoch {NCSNPP_EPOCHS} --schedule {NCSNPP_EPOCHS} --save_image_every 1 --save_ckpt_every 1")

# (name, stage, what, dataset, method whose tuned learning rate the row takes (None: its flags
# set it), train.py flags after MLP's and the method's (the later of a repeated flag wins), seeds)
WIDE = "--mlp_width 512 --num_epoch 12 --schedule 12 --save_image_every 1"
ROWS = [
    # stage -1, the probes that chose the shared settings (one seed each, TUNING_SEED):
    # 3 hidden layers of 512 for 12 epochs left UOTM falling (its tuning ran on, here, until the
    # OTM runs, stopped then); 256 for 24 epochs is as cheap per run
    *[(f"probe_w512_{method}_lr{lr:g}", -1, f"probe: {method} at lr {lr:g}, width 512, 12 epochs", "mnist", None,
       f"{METHODS[method]} --lr_g {lr:g} --lr_d {lr:g} {WIDE}", (TUNING_SEED,))
      for method in ("gan", "uotm") for lr in (1e-3, 4e-4)],
    *[(f"tune_{method}_lr{lr:g}", 0, f"tuning: {method} at lr {lr:g}", "mnist", None, f"{METHODS[method]} "
       f"--lr_g {lr:g} --lr_d {lr:g}", (TUNING_SEED,)) for method in METHODS for lr in LEARNING_RATES],
    ("gan", 1, "non-saturating GAN (R1 0.2, EMA)", "mnist", "gan", "", SEEDS),
    ("uotm_kl", 1, "UOTM (kl, kl) (exp), EMA", "mnist", "uotm", "", SEEDS),
    ("uotm_kl_no_ema", 1, "UOTM (kl, kl) without EMA", "mnist", "uotm", "--no_ema", SEEDS),
    ("uotm_softplus", 1, "UOTM (softplus, softplus), EMA", "mnist", "uotm", "--phi1 softplus --phi2 softplus", SEEDS),
    ("otm", 1, "OTM: balanced OT (linear, linear), EMA", "mnist", "otm", "", SEEDS),
    ("outliers_uotm", 2, "UOTM (kl, kl) on Fashion-MNIST + 1% MNIST", OUTLIER_SET, "uotm", "", SEEDS),
    ("outliers_otm", 2, "OTM on Fashion-MNIST + 1% MNIST", OUTLIER_SET, "otm", "", SEEDS),
    ("clean_uotm", 2, "UOTM (kl, kl) on Fashion-MNIST alone: the detector's false positives", "fashion_mnist",
     "uotm", "", SEEDS),
    # stage 4, declared on 2026-12-03 after stages 1-2 were seen and before any of its runs: the
    # outlier experiment again on new seeds, on which the best-save rule (BEST_SAVE) gives verdicts
    ("confirm_outliers_uotm", 4, "UOTM (kl, kl) on Fashion-MNIST + 1% MNIST, new seeds", OUTLIER_SET, "uotm", "",
     CONFIRM_SEEDS),
    ("confirm_outliers_otm", 4, "OTM on Fashion-MNIST + 1% MNIST, new seeds", OUTLIER_SET, "otm", "", CONFIRM_SEEDS),
    # stage 3, the papers' network at CPU scale: NCSN++ map and potential (see NCSNPP), UOTM's rate
    ("ncsnpp_uotm", 3, "UOTM (kl, kl), NCSN++ reduced (G 0.42M, D 0.19M), batch 64, "
     f"{NCSNPP_EPOCHS} epochs", "mnist", "uotm", NCSNPP, (0,)),
]
FD = {"mnist": "mnist_fd", "fashion_mnist": "fashion_mnist_fd", OUTLIER_SET: "fashion_mnist_fd"}
FORMATS = {"mnist_fd": "{:.2f}", "fashion_mnist_fd": "{:.2f}", "outlier_fraction": "{:.4f}"}
ROW = {row[0]: row for row in ROWS}
STAGES = sorted({row[1] for row in ROWS})


def row_of(name):
    """The row of a name in the tables: a row of ROWS, or `<row>_lr<rate>` (an abandoned rate)."""
    return ROW[name] if name in ROW else ROW[name.rsplit("_lr", 1)[0]]


def curve_key(name):
    return FD[row_of(name)[3]]


def floor_of(records, dataset):
    """The floor.json of the first run on `dataset` that has one (every run on it holds the same)."""
    return next((r["floor"] for r in records if "floor" in r and row_of(r["row"])[3] == dataset), None)


def rate_of(record):
    """The learning rate a run trained with (the last --lr_g of its flags)."""
    flags = shlex.split(record["flags"])
    return float([flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--lr_g"][-1])


def tuning_ranking(records, method):
    """`method`'s tuning rates as [(rate, tuning row)], lowest final mnist_fd first (a diverged
    tuning run is never ranked), or None before its tuning runs have all finished."""
    tuned = [(final(r, "mnist_fd"), r["row"]) for r in records if r["row"].startswith(f"tune_{method}_lr")]
    if len(tuned) < len(LEARNING_RATES) or all(v is None for v, _ in tuned):
        return None
    return [(float(name.rsplit("_lr", 1)[1]), name) for v, name in sorted(t for t in tuned if t[0] is not None)]


def abandoned(records, method, rate):
    """The divergence rule: the method's main row diverged on a majority of SEEDS at `rate`."""
    runs = [r for r in records if r["row"] == MAIN[method] and rate_of(r) == rate]
    return sum(r["diverged"] for r in runs) > len(SEEDS) // 2


def chosen_lr(records, method):
    """(rate, tuning row) of `method`: the best of its tuning ranking that the divergence rule has
    not abandoned; None before its tuning runs have all finished, (None, None) when the rule
    abandoned every rate."""
    ranking = tuning_ranking(records, method)
    if ranking is None:
        return None
    return next(((rate, name) for rate, name in ranking if not abandoned(records, method, rate)), (None, None))


def view(records):
    """The records as the tables read them: a run of a row at a rate its method no longer uses
    is a run of the row `<row>_lr<rate>`."""
    rates = {method: chosen_lr(records, method) for method in METHODS}
    shown = []
    for r in records:
        method = ROW[r["row"]][4]
        if method is not None and (rates[method] is None or rate_of(r) != rates[method][0]):
            r = dict(r, row=f"{r['row']}_lr{rate_of(r):g}")
        shown.append(r)
    return shown


def row_argv(row, seed, out, datadir, records):
    """train.py's arguments for one run of `row` (the method's learning rate read from the
    records: tuning and the divergence rule) and its run directory (named with the rate when
    the rule moved the method off its best tuning rate)."""
    name, _, _, dataset, method, flags, _ = row
    lr, exp = "", f"{name}_seed{seed}"
    if method is not None:
        rate, _ = chosen_lr(records, method)
        if rate is None:
            raise SystemExit(f"study_mnist: every tuning rate of {method} was abandoned by the divergence rule")
        lr = f"{METHODS[method]} --lr_g {rate:g} --lr_d {rate:g}"
        if rate != tuning_ranking(records, method)[0][0]:
            exp = f"{name}_lr{rate:g}_seed{seed}"
    argv = shlex.split(f"{MLP} --dataset {dataset} --num_epoch {EPOCHS} --schedule {EPOCHS} "
                       f"--save_image_every {SAVE_EVERY} --save_ckpt_every {SAVE_EVERY} "
                       f"{lr} {flags}") + [
        "--datadir", datadir, "--seed", str(seed), "--outdir", os.path.join(out, "runs"), "--device", "cpu",
        "--log_every", "200", "--resume", "auto", "--exp", exp]
    return argv, os.path.join(out, "runs", dataset, exp)


def run_row(row, seed, out, datadir, records, nearest):
    """One run, recorded with its floor.json and, on the outlier set, the nearest-source share."""
    argv, run_dir = row_argv(row, seed, out, datadir, records)
    record = study.train_run(row[0], seed, argv, run_dir, out)
    floor_path = os.path.join(run_dir, "floor.json")
    if os.path.exists(floor_path):
        with open(floor_path, encoding="utf-8") as f:
            record["floor"] = json.load(f)
    if row[3] == OUTLIER_SET:
        record["nearest_source"] = nearest
    return record


def nearest_source(datadir):
    from datasets_prep import measures
    share, outliers = measures.nearest_source_share(OUTLIER_SET, datadir)
    return dict(share=share, outlier_share=outliers, draws=50000, seed=0)


KEYS = ("precision", "recall", "accepted_share", "train_distance_ratio", "classes_covered")


def results_table(records, stage):
    """The rows of `stage` that have records: per row, mean +- sd over its seeds of the final
    measures, the floor at the same n (from the runs' floor.json), the seed-mean curve and the
    slope rule; a tuning row's line says which rate its method chose, and a row's runs at a rate
    the divergence rule abandoned follow it as a row of their own."""
    shown = view(records)
    names = [(name, row) for row in ROWS if row[1] == stage
             for name in [row[0]] + sorted({r["row"] for r in shown if r["row"].startswith(row[0] + "_lr")})
             if any(r["row"] == name for r in shown)]
    if not names:
        return ""
    outliers = any(row[3] != "mnist" for _, row in names)
    header = ["row", "what", "n", "fd", *KEYS, *(["outlier_fraction"] if outliers else []), "fd per save (seed mean)",
              "drift over the last third of saves", "diverged", "lr", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for dataset in dict.fromkeys(row[3] for _, row in names):
        floor = floor_of(records, dataset)
        if floor is not None:
            key = FD[dataset]
            cells = [f"{floor[k][0]:.2f} +- {floor[k][1]:.2f}" for k in (key, *KEYS)]
            out = [f"{floor['outlier_fraction'][0]:.4f}"] if outliers and "outlier_fraction" in floor else \
                ["n/a"] if outliers else []
            lines.append(f"| floor: {dataset} | {floor['n']:,} {floor['sets']} ({key}) | {floor['draws']} | "
                         + " | ".join(cells + out) + " | n/a" * 5 + " |")
    for name, (row_name, _, what, dataset, method, _, _) in names:
        runs = [r for r in shown if r["row"] == name]
        key = FD[dataset]
        cells = [mean_sd([final(r, key) for r in runs], "{:.2f}")] + \
            [mean_sd([final(r, k) for r in runs], "{:.2f}") for k in KEYS]
        if outliers:
            cells.append(mean_sd([final(r, "outlier_fraction") for r in runs], "{:.4f}"))
        if name != row_name:
            what, lr = f"{what}; abandoned by the divergence rule", f"{rate_of(runs[0]):g} (abandoned)"
        elif method is not None:
            rate = chosen_lr(records, method)
            lr = "n/a" if rate is None or rate[0] is None else f"{rate[0]:g} ({method}'s tuning)"
        else:
            rate, tuned_method = float(name.rsplit("_lr", 1)[1]), name.split("_")[1]
            chosen = chosen_lr(records, tuned_method)
            lr = f"{rate:g}" + (" (chosen)" if chosen and chosen[1] == name else
                                " (abandoned)" if stage == 0 and abandoned(records, tuned_method, rate) else "")
        c = study.row_cells(shown, name, key, "{:.1f}")
        lines.append(f"| {name} | {what} | {c['n']} | " + " | ".join(cells) +
                     f" | {c['curve']} | {c['drift']} | {c['diverged']} | {lr} | {c['seconds']} |")
    return "\n".join(lines)


# (row A, row B, measure, claim, claim_lower): uot/study.py's compare()
COMPARISONS = [
    ("uotm_kl", "gan", "mnist_fd", "course report: the GAN generates better than UOTM (29.78 against 35.6)", False),
    ("uotm_softplus", "uotm_kl", "mnist_fd", "course report: softplus trains better than exp (kl)", True),
    ("uotm_kl", "uotm_kl_no_ema", "mnist_fd", "course report: EMA does not help (143 and 136 with it)", None),
    ("uotm_kl", "otm", "mnist_fd", "UOTM paper: UOT generates better than OT (OTM)", True),
    ("uotm_kl", "gan", "recall", "UOTM against the GAN: recall", None),
    ("outliers_uotm", "outliers_otm", "outlier_fraction", "UOTM paper: UOTM generates fewer outliers than OTM", True),
    ("outliers_uotm", "clean_uotm", "outlier_fraction", "UOTM: digits in its samples against the detector's false "
     "positives on UOTM trained without digits", None),
    ("outliers_uotm", "outliers_otm", "fashion_mnist_fd", "UOTM against OTM with outliers in the data", None),
]

# stage 4's best-save rule (the module docstring): its runs, its evaluation noise and its comparisons
BEST_SAVE_ROWS = ("outliers_uotm", "outliers_otm", "clean_uotm", "confirm_outliers_uotm", "confirm_outliers_otm")
EVAL_SEED_OFFSET = 1000
BEST_SAVE_COMPARISONS = [
    ("confirm_outliers_uotm", "confirm_outliers_otm", "outlier_fraction",
     "UOTM paper: UOTM generates fewer outliers than OTM (best saves, new seeds)", True),
    ("confirm_outliers_uotm", "clean_uotm", "outlier_fraction", "UOTM: digits in its samples against the detector's "
     "false positives on UOTM trained without digits (best saves)", None),
    ("confirm_outliers_uotm", "confirm_outliers_otm", "fashion_mnist_fd",
     "UOTM against OTM with outliers in the data (best saves, new seeds)", None),
]

def best_save(record, run_dir, datadir):
    """The best-save rule for one run (the module docstring): the record of its save with the
    lowest recorded fd, measured again on 2,000 new samples of that save's netG_<epoch>.pth."""
    import argparse

    import torch

    from datasets_prep import measures
    from score_sde import build_generator, source_shape
    from uot.io import load_checkpoint

    torch.set_num_threads(1)   # as the runs measured their saves (uot/study.py: one thread a run)
    dataset = row_of(record["row"])[3]
    key, saves = FD[dataset], record["saves"]
    index = min(range(len(saves)), key=lambda i: saves[i][key])   # the first of equal values
    epoch = (index + 1) * SAVE_EVERY
    with open(os.path.join(run_dir, "options.json"), encoding="utf-8") as f:
        cfg = argparse.Namespace(**json.load(f))
    G = build_generator(cfg)
    G.load_state_dict(load_checkpoint(os.path.join(run_dir, f"netG_{epoch}.pth")))
    measure, outliers = measures.dataset_measure(dataset, datadir)
    count = cfg.measure_samples or measure.recipe.samples
    noise = torch.Generator().manual_seed(record["seed"] + EVAL_SEED_OFFSET)
    x, z = torch.randn((count, *source_shape(cfg)), generator=noise), torch.randn(count, cfg.nz, generator=noise)
    with torch.no_grad():
        images = torch.cat([G.eval()(x[i:i + 1000], z[i:i + 1000]) for i in range(0, count, 1000)]).float()
    return dict(row=record["row"], seed=record["seed"], epoch=epoch, last_epoch=len(saves) * SAVE_EVERY,
                selected=saves[index][key], samples=count, noise_seed=record["seed"] + EVAL_SEED_OFFSET,
                **measure.metrics(images, outliers))


def as_best_records(best):
    """The best-save records as runs of rows `<row>@best` with their one measured save (what
    uot/study.py's comparisons read as a run's final values)."""
    return [dict(row=f"{b['row']}@best", seed=b["seed"], diverged=False, saves=[b]) for b in best]


def best_save_qualification(records, best):
    """A row's qualification for a verdict: the slope rule, and for a `<row>@best` row also
    whether it is past its best save (the selected save before the last) on a majority of its
    seeds (the best-save rule)."""
    slope = study.slope_rule(view(records), curve_key)

    def qualification(name):
        if not name.endswith("@best"):
            return slope(name)
        cell, flat = slope(name[:-len("@best")])
        runs = [b for b in best if b["row"] == name[:-len("@best")]]
        past = sum(b["epoch"] < b["last_epoch"] for b in runs)
        return f"{cell}; past its best save on {past}/{len(runs)}", flat or past > len(runs) / 2
    return qualification


# the course report's table (Inception FID on MNIST, its own networks) and the row of this study
# that runs its configuration: its "UOT baseline" is the Psi* that is not exp (softplus, by
# elimination: the report names softplus and exp) and its exp rows without "EMA" train without it
COURSE_REPORT = [("GAN baseline", "n/a", 29.78, "gan"),
                 ("UOT baseline", "60", 35.6, "uotm_softplus"),
                 ("UOT baseline", "100", 46.8, "uotm_softplus"),
                 ("UOT + Psi* = exp", "100", 37.1, "uotm_kl_no_ema"),
                 ("UOT + Psi* = exp + EMA", "50", 143, "uotm_kl"),
                 ("UOT + Psi* = exp + EMA", "90", 136, "uotm_kl")]


def at_epoch(record, key, epoch):
    """The measure at the save of `epoch` of a run that reached it without diverging."""
    index = epoch // SAVE_EVERY - 1
    if record["diverged"] or len(record["saves"]) <= index:
        return None
    return record["saves"][index][key]


def course_report_table(records):
    """The course report's rows beside this study's runs of the same configuration: mnist_fd,
    mean +- sd over the seeds, at half of the training and at its end, and the floor at the
    same n. Scales differ (Inception FID, other networks): the orderings are compared."""
    shown, floor = view(records), floor_of(records, "mnist")
    if floor is None:
        return ""
    half = EPOCHS // 2
    lines = [f"| course report: row | its epochs | its FID | this study: row | mnist_fd at epoch {half} | "
             f"mnist_fd at epoch {EPOCHS} | floor (n = {floor['n']:,}) |", "|---" * 7 + "|"]
    for name, epochs, fid, row in COURSE_REPORT:
        runs = [r for r in shown if r["row"] == row]
        cells = []
        for e in (half, EPOCHS):
            values = [v for r in runs if (v := at_epoch(r, "mnist_fd", e)) is not None]
            cells.append(f"{mean_sd(values, '{:.2f}')} ({len(values)})")
        lines.append(f"| {name} | {epochs} | {fid} | {row} | " + " | ".join(cells)
                     + f" | {floor['mnist_fd'][0]:.2f} +- {floor['mnist_fd'][1]:.2f} |")
    return "\n".join(lines)


def compare(records, best=()):
    """Every comparison of the page, Holm-adjusted together: the slope rule's (COMPARISONS) and
    the best-save rule's (BEST_SAVE_COMPARISONS, on the rows' `@best` values)."""
    comparisons = COMPARISONS + [(f"{a}@best", f"{b}@best", *rest) for a, b, *rest in BEST_SAVE_COMPARISONS]
    return study.compare(view(records) + as_best_records(best), comparisons, curve_key, FORMATS,
                         best_save_qualification(records, best))


def best_save_table(records, best):
    """Per row of BEST_SAVE_ROWS with best-save records: the selected saves, the recorded fd of
    each selected save (what chose it) and the measures of the new samples, beside the floor."""
    if not best:
        return ""
    key = FD[OUTLIER_SET]
    header = ["row (best save)", "n", "selected epochs", f"{key} that chose it", key, "precision", "recall",
              "outlier_fraction", "past its best save"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for dataset in dict.fromkeys(row_of(name)[3] for name in BEST_SAVE_ROWS):
        floor = floor_of(records, dataset)
        if floor is not None:
            outliers = f"{floor['outlier_fraction'][0]:.4f}" if "outlier_fraction" in floor else "n/a"
            lines.append(f"| floor: {dataset}, {floor['n']:,} held-out images, {floor['draws']} draws | | | | "
                         + " | ".join(f"{floor[k][0]:.2f} +- {floor[k][1]:.2f}" for k in (key, "precision", "recall"))
                         + f" | {outliers} | |")
    for name in BEST_SAVE_ROWS:
        runs = sorted((b for b in best if b["row"] == name), key=lambda b: b["seed"])
        if runs:
            lines.append(f"| {name} | {len(runs)} | {' '.join(str(b['epoch']) for b in runs)} | "
                         f"{mean_sd([b['selected'] for b in runs], '{:.2f}')} | "
                         + " | ".join(mean_sd([b[k] for b in runs], FORMATS.get(k, "{:.2f}"))
                                      for k in (key, "precision", "recall", "outlier_fraction"))
                         + f" | {sum(b['epoch'] < b['last_epoch'] for b in runs)}/{len(runs)} |")
    return "\n".join(lines)


def fairness(records):
    """The line that says whether the outlier comparison is fair (nearest-source share at most
    twice the digits' share), or '' without records of the outlier set."""
    near = next((r["nearest_source"] for r in records if "nearest_source" in r), None)
    if near is None:
        return ""
    ratio = near["share"] / near["outlier_share"]
    return (f"Nearest-source share: {near['share']:.4f} of {near['draws']:,} N(0, I) draws have a digit as their "
            f"nearest training image, against the digits' {near['outlier_share']:.4f} of the data ({ratio:.2f}x): "
            + ("fair (at most 2x)." if ratio <= 2 else "NOT fair (above 2x): the outlier comparison has no verdict."))


def page(records, best=()):
    parts = [results_table(records, stage) for stage in STAGES] + [course_report_table(records), fairness(records),
                                                                    best_save_table(records, best)]
    return "\n\n".join([p for p in parts if p] + ["\n".join(compare(records, best))])


def figures(records, out):
    records = view(records)
    study.sample_figure(records, [(row[0], row[2]) for row in ROWS if row[1] > 0], os.path.join(out, "samples.png"),
                        out)
    floors = {}
    for stage, dataset in ((1, "mnist"), (2, OUTLIER_SET), (3, "mnist"), (4, OUTLIER_SET)):
        floor = floor_of(records, dataset)
        if floor is not None:
            floors[stage] = (f"floor (n = {floor['n']:,})", floor[FD[dataset]][0])
    study.curve_figure(records, [(row[0], row[1]) for row in ROWS], curve_key, os.path.join(out, "curves.png"),
                       "iteration", floors)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None):
    p = study_parser(__doc__.splitlines()[0], os.path.join("train_logs", "study_mnist"))
    p.add_argument("--datadir", default=None, help="the folder of datasets_prep.fetch mnist fashion_mnist")
    p.add_argument("--seeds", type=int, default=None, help="at most this many seeds per row of stages 1-2")
    p.add_argument("--table", metavar="RUNS.jsonl", help="print the tables of recorded runs and exit")
    p.add_argument("--best", metavar="BEST_SAVES.jsonl", help="with --table: the best-save records beside them")
    a = p.parse_args(argv)
    if a.table:
        print(page(*(read_jsonl(path) for path in (a.table, a.best) if path)))
        return
    if not a.datadir:
        p.error("--datadir: give the folder where `python -m datasets_prep.fetch mnist fashion_mnist --datadir "
                "DIR` put the data")
    rows = chosen_rows(p, a.rows, ROWS)
    os.makedirs(a.out, exist_ok=True)
    log = RecordLog(os.path.join(a.out, "runs.jsonl"))   # rewritten atomically at every append
    nearest = None
    for stage in STAGES:
        while True:   # again while the divergence rule moves a method to another rate
            rates = {method: chosen_lr(log.records, method) for method in METHODS}
            missing = {row[4] for row in rows if row[1] == stage and row[4] is not None and rates[row[4]] is None}
            if missing:
                p.error(f"stage {stage} needs the tuning runs of {', '.join(sorted(missing))} (stage 0): "
                        "run without --rows")
            done = {(r["row"], r["seed"]) for r in view(log.records)}
            todo = [(seed, row) for row in rows if row[1] == stage
                    for seed in row[6][:a.seeds or None] if (row[0], seed) not in done]
            todo.sort(key=lambda t: t[0])   # seed-major: every row gets its first seeds first
            if nearest is None and any(row[3] == OUTLIER_SET for _, row in todo):
                nearest = nearest_source(a.datadir)
            records = list(log.records)

            def start(row, seed):
                return lambda: run_row(row, seed, a.out, a.datadir, records, nearest)

            study.run_all([(row[0], seed, start(row, seed), None) for seed, row in todo], a.jobs, log, curve_key)
            if not todo or {method: chosen_lr(log.records, method) for method in METHODS} == rates:
                break
    best = RecordLog(os.path.join(a.out, "best_saves.jsonl"))
    measured = {(b["row"], b["seed"]) for b in best.records}
    for r in view(log.records):   # the best-save rule, once per finished run of its rows (at their rate)
        if r["row"] in BEST_SAVE_ROWS and not r["diverged"] and r["saves"] and (r["row"], r["seed"]) not in measured:
            best.append(best_save(r, os.path.join(a.out, r["run_dir"]), a.datadir))
    text = page(log.records, best.records)
    atomic_write_text(os.path.join(a.out, "results.md"), text + "\n")
    print(text)
    figures(log.records, a.out)
    print(f"wrote {os.path.join(a.out, 'results.md')}, samples.png, curves.png")


if __name__ == "__main__":
    main()
