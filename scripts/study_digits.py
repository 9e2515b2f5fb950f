"""The papers' claims on real images, at CPU scale: a multi-seed study on scikit-learn's
8x8 handwritten digits, in one command (stages 1-3 under an hour on 2 cores, stage 4 another).

    python scripts/study_digits.py [--out train_logs/study_digits] [--jobs 2] [--rows NAME ...]
    python scripts/study_digits.py --compare train_logs/study_digits/runs.jsonl

The generators train on `digits_train` (the 1,437 digits outside the 360 that the digits
measure, datasets_prep.measures.digits, holds out as its real control) and are measured at every
save. Three stages, each row trained with its own number of seeds (seeds 0, 1, ...):

  1. the main rows, 5 seeds: the digits MLP pair (scripts/digits_mlp.flags), 180 epochs of 11
     iterations (1,980), trained to convergence; UOTM against OTM, GAN (three configurations:
     as many as UOTM's tau sweep; UOTM at the GAN's R1 1, the loss the one difference), GAN +
     transport cost, the course report's rows (softplus against exp, EMA on and off), the
     pairings, and the outlier set digits_train+shapes;
  2. S-JKO from a converged phase 0: each seed's uotm_kl run (--init_from) goes on for 2,200
     iterations either as K = 10 JKO steps (h 0.1 or 1) or as UOTM continued (at tau 0.024, and
     at tau 0.0012, the cost almost dropped: the control of the JKO rows, which drop the cost
     tied to the source), at the same constant learning rate;
  3. the cross-check on the papers' NCSN++ (scripts/digits.flags), 3 seeds of 12 epochs: too
     short to converge, a check that the main rows' ordering is not the MLP's alone.
  4. the tau sweep (issue 25): UOTM (kl, kl) at tau 0.024, 0.006, 0.0015 and 0.0003 with OTM and
     the GAN at the same settings, 5 seeds each, on twice stage 1's budget (360 epochs): does
     UOTM's gap to OTM close as the relaxation's error (at most tau W2^2) shrinks?

`--jobs` runs at a time with one torch thread each. A run that finished is never run again:
its record in runs.jsonl is kept, so a second invocation skips it and a half-finished study
continues (a run killed midway continues from its content.pth with --resume auto). Outputs:

  runs.jsonl      one record per run: row, seed, flags, exit code (3: diverged), seconds, the
                  CPU model, torch and Python versions, and every save's digits measures
  results.md      the measure's floor at the runs' n (2,000 samples), then per row, mean +- std
                  over the seeds of the final measures, the curve, and whether it is flat (the
                  slope rule, `convergence`); then the comparisons: Welch's p, and Holm's
                  adjustment across all of them, on which the verdicts stand
  samples.png     the final samples of every row's first seed
  curves.png      digits_fd over training per row, the mean over seeds

digits_fd is a Frechet distance on the features of a small digit classifier, not FID.
"""
import json
import os
import shlex
import statistics

from uot import study
from uot.io import RecordLog, atomic_write_text
from uot.records import chosen_rows, mean_sd, study_parser
from uot.study import final, finals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def read_flags(name):
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as f:
        return f.read().strip()


# scripts/digits_mlp.flags: the digits MLP configuration (networks, batch, learning rates, EMA
# decay 0.99, tau 0.024), read by the demo too; scripts/digits.flags: the NCSN++ one
MLP, NCSNPP = read_flags("digits_mlp.flags"), read_flags("digits.flags")
ITERS_PER_EPOCH = 1437 // 128        # batch 128 on the 1,437 digits of digits_train
EPOCHS, SAVE_EVERY = 180, 20
# stage 2: 10 JKO steps of 220 iterations = 200 epochs of UOTM, at lr 1e-4 (constant) for both
JKO_STEPS, JKO_ITERS, CONTINUE_LR = 10, 220, 1e-4
SMALL_TAU = 0.0012   # stage 2's control: UOTM continued with the cost tied to the source almost dropped
NCSNPP_EPOCHS, NCSNPP_SAVE_EVERY = 12, 2   # 44 iterations per epoch at batch 32
# stage 4, the tau sweep: twice stage 1's budget (OTM and the GAN were still falling at 180 epochs)
SWEEP_EPOCHS, SWEEP_SAVE_EVERY = 360, 40
SWEEP_TAUS = (0.024, 0.006, 0.0015, 0.0003)   # the study's tau, then 4x, 16x and 80x below


def uotm(flags=""):
    return f"{MLP} --num_epoch {EPOCHS} --schedule {EPOCHS} --save_image_every {SAVE_EVERY} {flags}"


def continued(flags):
    """Stage 2: from uotm_kl's final networks, constant learning rate, no data noise, the same
    Psi* pair, pairing and EMA as uotm_kl; `flags` pick UOTM or the JKO steps."""
    return (f"{MLP} --lr_g {CONTINUE_LR} --lr_d {CONTINUE_LR} --ema --phi1 kl --phi2 kl "
            f"--potential_pairing all_pairs {flags}")


def sweep(flags=""):
    return (f"{MLP} --num_epoch {SWEEP_EPOCHS} --schedule {SWEEP_EPOCHS} --save_image_every {SWEEP_SAVE_EVERY} "
            f"{flags}")


def sjko(h):
    return continued(f"--num_phase {JKO_STEPS + 1} --init_num_iterations 0 --num_iterations {JKO_ITERS} "
                     f"--init_h 1 --h {h} --no_data_noise --save_image_every {JKO_ITERS}")


def ncsnpp(flags=""):
    return (f"{NCSNPP} --dataset digits_train --ema --num_epoch {NCSNPP_EPOCHS} --schedule {NCSNPP_EPOCHS} "
            f"--save_image_every {NCSNPP_SAVE_EVERY} {flags}")


GAN_DCGAN = "--lr_g 2e-4 --lr_d 2e-4 --beta1 0.5 --beta2 0.999"   # DCGAN's optimiser (Radford et al.)
SHAPES = "--dataset digits_train+shapes"

# (name, group, what, train.py flags (the later of a repeated flag wins), seeds, the row whose
# final content.pth the run starts from (stage 2) or None)
ROWS = [
    ("uotm_kl", "main", "UOTM (kl, kl), tau 0.024, all-pairs potential loss (the public code's)", uotm(), 5, None),
    ("tau_0.012", "tau", "UOTM (kl, kl), tau 0.012 (2x below)", uotm("--tau 0.012"), 5, None),
    ("tau_0.048", "tau", "UOTM (kl, kl), tau 0.048 (2x above; the published 1e-3 per CIFAR-10 pixel)",
     uotm("--tau 0.048"), 5, None),
    ("otm", "main", "OTM: balanced OT (linear, linear)", uotm("--phi1 linear --phi2 linear"), 5, None),
    ("gan", "GAN", "non-saturating GAN, the study's optimiser and R1 0.2", uotm("--loss gan"), 5, None),
    ("gan_dcgan_opt", "GAN", "GAN, DCGAN's optimiser: lr 2e-4, betas (0.5, 0.999)", uotm(f"--loss gan {GAN_DCGAN}"),
     5, None),
    ("gan_r1_1", "GAN", "GAN, R1 weight 1 (5x)", uotm("--loss gan --r1_gamma 1"), 5, None),
    ("gan_cost", "GAN", "GAN loss + the transport cost, tau 0.024 (--loss jsd)", uotm("--loss jsd"), 5, None),
    ("uotm_kl_r1_1", "GAN", "UOTM (kl, kl) with R1 weight 1: gan_r1_1 but for the loss", uotm("--r1_gamma 1"), 5, None),
    ("uotm_softplus", "course report", "UOTM (softplus, softplus)", uotm("--phi1 softplus --phi2 softplus"), 5, None),
    ("uotm_kl_no_ema", "course report", "UOTM (kl, kl) without EMA", uotm("--no_ema"), 5, None),
    ("uotm_kl_per_sample", "pairing", "UOTM (kl, kl), per-sample potential loss (the paper's)",
     uotm("--potential_pairing per_sample"), 5, None),
    ("shapes_uotm", "outliers", "UOTM (kl, kl) on digits_train + 1% stroke shapes", uotm(SHAPES), 5, None),
    ("shapes_otm", "outliers", "OTM on digits_train + 1% stroke shapes", uotm(f"--phi1 linear --phi2 linear {SHAPES}"),
     5, None),
    ("uotm_continued", "S-JKO", f"uotm_kl continued {JKO_STEPS * JKO_ITERS} iterations at lr {CONTINUE_LR}",
     continued(f"--num_epoch {JKO_STEPS * JKO_ITERS // ITERS_PER_EPOCH} --no_lr_decay --save_image_every 20"),
     5, "uotm_kl"),
    ("uotm_continued_tau_small", "S-JKO", f"uotm_kl continued {JKO_STEPS * JKO_ITERS} iterations at lr {CONTINUE_LR}, "
     f"tau {SMALL_TAU} (20x smaller: the cost almost dropped, as in the JKO steps)",
     continued(f"--num_epoch {JKO_STEPS * JKO_ITERS // ITERS_PER_EPOCH} --no_lr_decay --save_image_every 20 "
               f"--tau {SMALL_TAU}"), 5, "uotm_kl"),
    ("sjko_h0.1", "S-JKO", f"uotm_kl + {JKO_STEPS} JKO steps of {JKO_ITERS} iterations, h 0.1", sjko(0.1), 5,
     "uotm_kl"),
    ("sjko_h1", "S-JKO", f"uotm_kl + {JKO_STEPS} JKO steps of {JKO_ITERS} iterations, h 1", sjko(1), 5, "uotm_kl"),
    *[(f"sweep_tau_{tau}", "tau sweep", f"UOTM (kl, kl), tau {tau}, {SWEEP_EPOCHS} epochs", sweep(f"--tau {tau}"),
       5, None) for tau in SWEEP_TAUS],
    ("sweep_otm", "tau sweep", f"OTM, {SWEEP_EPOCHS} epochs", sweep("--phi1 linear --phi2 linear"), 5, None),
    ("sweep_gan", "tau sweep", f"GAN (R1 0.2, the study's settings), {SWEEP_EPOCHS} epochs", sweep("--loss gan"), 5,
     None),
    ("ncsnpp_uotm", "NCSN++", "UOTM (kl, kl), tau 0.048, NCSN++ (12 epochs)", ncsnpp(), 3, None),
    ("ncsnpp_otm", "NCSN++", "OTM, NCSN++", ncsnpp("--phi1 linear --phi2 linear"), 3, None),
    ("ncsnpp_gan", "NCSN++", "GAN, NCSN++", ncsnpp("--loss gan"), 3, None),
    ("ncsnpp_shapes_uotm", "NCSN++", "UOTM on digits_train + 1% shapes, NCSN++", ncsnpp(SHAPES), 3, None),
]
STAGES = {"S-JKO": 2, "NCSN++": 3, "tau sweep": 4}   # every other group is stage 1


def row_argv(row, seed, out):
    """train.py's arguments for one run of `row`, and its run directory."""
    name, _, _, flags, _, init_row = row
    argv = shlex.split(flags) + ["--seed", str(seed), "--outdir", os.path.join(out, "runs"), "--device", "cpu",
                                 "--save_ckpt_every", "100000", "--log_every", "100", "--resume", "auto",
                                 "--exp", f"{name}_seed{seed}"]
    dataset = argv[max(i for i, flag in enumerate(argv) if flag == "--dataset") + 1]   # the last one wins
    if init_row is not None:
        argv += ["--init_from", os.path.join(out, "runs", dataset, f"{init_row}_seed{seed}", "content.pth")]
    return argv, os.path.join(out, "runs", dataset, f"{name}_seed{seed}")


SAMPLES = 2000   # samples per save in every run of the study (train.py's --measure_samples default)


def convergence(records, row, key="digits_fd"):
    return study.convergence(records, row, key)


def digits_floor(n=SAMPLES):
    """(the digits measure's floor at n samples, {measure: (mean, sd)} over sets of n held-out real
    digits; a line that says how those sets were drawn). A Frechet distance and the k-NN radii
    shrink as the sets grow, so the study's rows are held against the floor at their own n."""
    from datasets_prep import measures
    from datasets_prep.measures.grey_images import FLOOR_DRAWS
    measure = measures.measure("digits")
    held_out = len(measure.data.held_out)
    how = "without" if 2 * n <= held_out else "with"   # the rule of the measure's held_out_draw
    return measure.floor(n), (f"{n:,} held-out real digits, drawn {how} replacement from the {held_out}: "
                              f"mean +- sd of {FLOOR_DRAWS} draws (n: the draws)"), FLOOR_DRAWS


def results_table(records, rows, floor=None):
    """The study's table: a first line with the floor at the study's n (`floor`: what
    digits_floor() returns; computed when None), then one line per row of `rows` that has records."""
    keys = ("digits_fd", "precision", "recall", "train_distance_ratio", "accepted_share", "classes_covered")
    header = ["row", "what", "n", *keys, "outliers", "digits_fd per save (seed mean)",
              "drift over the last third of saves", "diverged", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    values, label, draws = digits_floor() if floor is None else floor
    fmt = {k: "{:.1f}" if k == "digits_fd" else "{:.2f}" for k in keys}
    lines.append(f"| floor | {label} | {draws} | " + " | ".join(
        f"{fmt[k].format(values[k][0])} +- {fmt[k].format(values[k][1])}" for k in keys) + " | n/a" * 5 + " |")
    for name, group, what, *_ in rows:
        runs = [r for r in records if r["row"] == name]
        if not runs:
            continue
        outliers = mean_sd([final(r, "outlier_fraction") for r in runs], "{:.4f}")
        c = study.row_cells(records, name, "digits_fd", "{:.0f}")
        lines.append(f"| {name} | {what} | {c['n']} | " + " | ".join(
            mean_sd([final(r, k) for r in runs], fmt[k]) for k in keys) +
            f" | {outliers} | {c['curve']} | {c['drift']} | {c['diverged']} | {c['seconds']} |")
    return "\n".join(lines)


# The claims the results page tests: (row A, row B, measure, claim, direction): True when the
# claim is that A is lower (digits_fd), False that A is higher (recall), None when the
# comparison has no direction to hold. "best_gan" stands for the GAN row of the three tuned
# ones with the lowest mean final digits_fd. Whether a row is flat is read on its digits_fd.
COMPARISONS = [
    ("uotm_kl", "otm", "digits_fd", "UOTM paper: UOT generates better than OT (OTM)", True),
    ("uotm_kl", "otm", "recall", "UOTM against OTM: recall", None),
    ("uotm_kl_r1_1", "gan_r1_1", "digits_fd", "UOTM paper: UOTM generates better than a GAN (the same networks, "
     "optimiser and R1 1: the loss the one difference)", True),
    ("uotm_kl", "best_gan", "digits_fd", "UOTM at its study setting against the GAN at its best of three (they "
     "differ in the loss and the R1 weight)", None),
    ("uotm_kl", "best_gan", "recall", "UOTM against the best GAN: recall", None),
    ("uotm_kl", "best_gan", "precision", "UOTM against the best GAN: precision", None),
    ("gan_cost", "gan", "digits_fd", "the transport cost helps a GAN (same optimiser and R1)", True),
    ("uotm_kl", "gan_cost", "digits_fd", "the semi-dual UOT loss helps beyond the cost (both with it)", True),
    ("uotm_softplus", "uotm_kl", "digits_fd", "course report: softplus trains better than exp (kl)", True),
    ("uotm_kl", "uotm_kl_no_ema", "digits_fd", "course report: EMA helps", True),
    ("uotm_kl_per_sample", "uotm_kl", "digits_fd", "per-sample against all-pairs potential loss", None),
    ("uotm_kl", "tau_0.012", "digits_fd", "tau 0.024 against 0.012", None),
    ("uotm_kl", "tau_0.048", "digits_fd", "tau 0.024 against 0.048", None),
    ("sjko_h0.1", "uotm_continued", "digits_fd", "S-JKO paper: JKO steps improve on UOTM (h 0.1)", True),
    ("sjko_h1", "uotm_continued", "digits_fd", "S-JKO paper: JKO steps improve on UOTM (h 1)", True),
    ("sjko_h0.1", "uotm_continued_tau_small", "digits_fd", "S-JKO's control: JKO steps (h 0.1) against UOTM "
     "continued with the cost almost dropped", True),
    ("uotm_continued_tau_small", "uotm_continued", "digits_fd", "dropping the cost alone, UOTM continued: tau "
     f"{SMALL_TAU} against 0.024", None),
    ("shapes_uotm", "shapes_otm", "outlier_fraction", "UOTM paper: UOTM generates fewer outliers than OTM", True),
    ("shapes_uotm", "uotm_kl", "outlier_fraction", "UOTM: shapes in its samples against the detector's "
     "false positives on UOTM trained without shapes", None),
    ("shapes_uotm", "shapes_otm", "digits_fd", "UOTM against OTM with outliers in the data", None),
    *[(f"sweep_tau_{tau}", "sweep_otm", "digits_fd", f"tau sweep: UOTM at tau {tau} against OTM", None)
      for tau in SWEEP_TAUS],
    (f"sweep_tau_{SWEEP_TAUS[-1]}", f"sweep_tau_{SWEEP_TAUS[0]}", "digits_fd",
     "tau sweep: UOTM's score falls as tau falls (the lowest tau against the study's)", True),
    (f"sweep_tau_{SWEEP_TAUS[-1]}", "sweep_gan", "digits_fd", "tau sweep: UOTM at the lowest tau against the GAN",
     None),
    ("ncsnpp_uotm", "ncsnpp_otm", "digits_fd", "NCSN++ cross-check: UOTM against OTM", None),
    ("ncsnpp_uotm", "ncsnpp_gan", "digits_fd", "NCSN++ cross-check: UOTM against GAN", None),
]
GANS = ("gan", "gan_dcgan_opt", "gan_r1_1")
FORMATS = {"digits_fd": "{:.2f}", "outlier_fraction": "{:.4f}"}


def best_gan(records):
    scored = [(statistics.mean(x), row) for row in GANS if (x := finals(records, row, "digits_fd"))]
    return min(scored)[1] if scored else None


def compare(records):
    """The lines of COMPARISONS for `records` (the study's runs.jsonl), "best_gan" resolved."""
    gan = best_gan(records)
    return study.compare(records, [(a, gan if b == "best_gan" else b, *rest) for a, b, *rest in COMPARISONS],
                         lambda row: "digits_fd", FORMATS)


PANELS = {"main": 0, "tau": 0, "GAN": 0, "course report": 1, "pairing": 1, "outliers": 1, "S-JKO": 2, "NCSN++": 2,
          "tau sweep": 3}


def figures(records, rows, out):
    """samples.png: the last sample grid of each row's first seed; curves.png: digits_fd per save."""
    study.sample_figure(records, [(name, what) for name, _, what, *_ in rows], os.path.join(out, "samples.png"), out)
    study.curve_figure(records, [(name, PANELS[group]) for name, group, *_ in rows], lambda name: "digits_fd",
                       os.path.join(out, "curves.png"), "iteration (S-JKO, continued: after uotm_kl's)")


def main(argv=None):
    p = study_parser(__doc__.splitlines()[0], os.path.join("train_logs", "study_digits"))
    p.add_argument("--seeds", type=int, default=None, help="at most this many seeds per row (default: each row's)")
    p.add_argument("--compare", metavar="RUNS.jsonl", help="print the comparisons of a finished study and exit")
    a = p.parse_args(argv)
    if a.compare:
        with open(a.compare, encoding="utf-8") as f:
            print("\n".join(compare([json.loads(line) for line in f if line.strip()])))
        return
    rows = chosen_rows(p, a.rows, ROWS)
    os.makedirs(a.out, exist_ok=True)
    log = RecordLog(os.path.join(a.out, "runs.jsonl"))   # rewritten atomically at every append
    records = log.records
    done = {(r["row"], r["seed"]) for r in records}
    # stage by stage, seed-major within a stage (every row gets its first seeds first)
    todo = sorted(((STAGES.get(row[1], 1), seed, i, row) for i, row in enumerate(rows)
                   for seed in range(min(row[4], a.seeds or row[4])) if (row[0], seed) not in done),
                  key=lambda t: t[:3])

    def start(row, seed):
        return lambda: study.train_run(row[0], seed, *row_argv(row, seed, a.out), a.out)

    study.run_all([(row[0], seed, start(row, seed), None if row[5] is None else (row[5], seed))
                   for _, seed, _, row in todo], a.jobs, log, lambda row: "digits_fd")
    table = results_table(records, rows) + "\n\n" + "\n".join(compare(records))
    atomic_write_text(os.path.join(a.out, "results.md"), table + "\n")
    print(table)
    figures(records, rows, a.out)
    print(f"wrote {os.path.join(a.out, 'results.md')}, samples.png, curves.png")


if __name__ == "__main__":
    main()
