"""scripts/study_mnist.py: its rows as train.py commands, the tuning rule that picks each
method's learning rate, its tables and the outlier comparison's fairness line. Its runner is
uot/study.py's, run for real by tests/test_study.py."""
import importlib.util
import json
import os
import shlex

import pytest

from tiny import ROOT


def load_study():
    spec = importlib.util.spec_from_file_location("study_mnist", os.path.join(ROOT, "scripts", "study_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(row, seed, fds, key="mnist_fd", diverged=False, lr=1e-3, **extra):
    """A record of `row` trained at `lr` whose saves (steps 1, 2, ...) end at the last of `fds`."""
    return dict(row=row, seed=seed, diverged=diverged, exit_code=3 if diverged else 0, seconds=1.0,
                flags=f"--lr_g 0.5 --seed {seed} --lr_g {lr:g} --lr_d {lr:g}",
                saves=[] if diverged else [{"step": i + 1, key: v, "precision": 0.5} for i, v in enumerate(fds)],
                **extra)


def mnist_floor(study):
    """A floor.json of 2,000 held-out MNIST images as train.py writes it."""
    return dict(n=2000, draws=10, sets="held-out real images", mnist_fd=[1.7, 0.18],
                **{k: [0.9, 0.01] for k in study.KEYS})


def tuned(study, finals):
    """Tuning records: {method: (final at LEARNING_RATES[0], final at [1])}."""
    return [run(f"tune_{method}_lr{lr:g}", study.TUNING_SEED, [100.0, v], lr=lr)
            for method, values in finals.items() for lr, v in zip(study.LEARNING_RATES, values)]


def test_the_chosen_rate_is_the_lowest_final_and_needs_every_tuning_run(tmp_path):
    study = load_study()
    hi, lo = study.LEARNING_RATES
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0)})
    assert study.chosen_lr(records, "gan") == (lo, f"tune_gan_lr{lo:g}")
    assert study.chosen_lr(records, "uotm") == (hi, f"tune_uotm_lr{hi:g}")
    assert study.chosen_lr(records, "otm") is None                   # not tuned yet
    assert study.chosen_lr(records[:1], "gan") is None               # one of its two runs missing
    diverged = [run(f"tune_otm_lr{hi:g}", 100, [], diverged=True), run(f"tune_otm_lr{lo:g}", 100, [99.0])]
    assert study.chosen_lr(diverged, "otm") == (lo, f"tune_otm_lr{lo:g}")   # a diverged run is never chosen


def test_the_divergence_rule_moves_every_row_of_a_method_to_its_next_rate(tmp_path):
    """A majority of SEEDS diverged at a method's chosen rate abandons that rate for all of the
    method's rows (softplus too: the rows keep differing in one thing); the abandoned runs become
    rows `<row>_lr<rate>` in the tables; the other methods keep their rates."""
    study = load_study()
    hi, lo = study.LEARNING_RATES
    assert len(study.SEEDS) == 5   # a majority: 3 of 5
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)})
    records += [run("uotm_kl", s, [], diverged=True, lr=hi) for s in range(2)] + [run("gan", 0, [1.0], lr=lo)]
    records += [run("uotm_softplus", s, [30.0, 20.0, 15.0, 9.0], lr=hi) for s in range(2)]
    assert study.chosen_lr(records, "uotm") == (hi, f"tune_uotm_lr{hi:g}")   # 2 of 5: not yet a majority
    assert {r["row"] for r in study.view(records)} >= {"uotm_kl", "uotm_softplus"}
    records.append(run("uotm_kl", 2, [], diverged=True, lr=hi))
    assert study.chosen_lr(records, "uotm") == (lo, f"tune_uotm_lr{lo:g}")
    assert study.chosen_lr(records, "gan") == (lo, f"tune_gan_lr{lo:g}")     # the other methods keep theirs
    for name in ("uotm_kl", "uotm_softplus", "outliers_uotm"):
        argv, run_dir = study.row_argv(study.ROW[name], 3, str(tmp_path), "DATA", records)
        assert argv[argv.index("--lr_g") + 1] == f"{lo:g}" and run_dir.endswith(f"{name}_lr{lo:g}_seed3")
    _, run_dir = study.row_argv(study.ROW["gan"], 3, str(tmp_path), "DATA", records)
    assert run_dir.endswith("gan_seed3")   # at its best rate: no rate in the name
    shown = {r["row"] for r in study.view(records)}
    assert {f"uotm_kl_lr{hi:g}", f"uotm_softplus_lr{hi:g}", "gan"} <= shown and "uotm_kl" not in shown
    table = study.results_table(records, 1)
    assert f"| uotm_kl_lr{hi:g} | UOTM (kl, kl) (exp), EMA; abandoned by the divergence rule | 0 |" in table
    assert f"| 3/3 | {hi:g} (abandoned) |" in table and f"| 0/2 | {hi:g} (abandoned) |" in table
    assert f"| {hi:g} (abandoned) |" in study.results_table(records, 0)
    records += [run("uotm_kl", s, [], diverged=True, lr=lo) for s in range(3)]
    assert study.chosen_lr(records, "uotm") == (None, None)
    with pytest.raises(SystemExit, match="every tuning rate of uotm was abandoned"):
        study.row_argv(study.ROW["uotm_kl"], 0, str(tmp_path), "DATA", records)


def test_every_row_is_a_valid_train_py_command_with_its_methods_tuned_rate(tmp_path, capsys):
    import train
    study = load_study()
    hi, lo = study.LEARNING_RATES
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)})
    rate = {"gan": lo, "uotm": hi, "otm": hi}
    for row in study.ROWS:
        argv, run_dir = study.row_argv(row, 0, str(tmp_path), "DATA", records)
        assert run_dir == os.path.join(str(tmp_path), "runs", row[3], f"{row[0]}_seed0")
        assert train.main(argv + ["--dry_run"]) == 0, row[0]
        last = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}   # the last wins
        probe = row[1] == -1   # the probes that chose the shared settings: width 512 for 12 epochs
        ncsnpp = row[1] == 3   # the papers' network, reduced
        epochs = "12" if probe else str(study.NCSNPP_EPOCHS) if ncsnpp else str(study.EPOCHS)
        assert last["--dataset"] == row[3] and last["--num_epoch"] == epochs
        assert last["--model_name"] == ("ncsnpp" if ncsnpp else "mlp")
        assert last["--mlp_width"] == ("512" if probe else "256")
        expected = rate[row[4]] if row[4] else float(row[0].rsplit("_lr", 1)[1])
        assert float(last["--lr_g"]) == float(last["--lr_d"]) == expected, row[0]
        phi = "softplus" if row[0] == "uotm_softplus" else "linear" if "otm" in row[0].split("_") else "kl"
        if "--loss" in last:
            assert last["--loss"] == "gan" and (row[0] == "gan" or "_gan_lr" in row[0])
        else:
            assert last["--phi1"] == last["--phi2"] == phi, row[0]
        assert ("--no_ema" in argv) == (row[0] == "uotm_kl_no_ema")
    out = capsys.readouterr().out
    # one network pair for every row but the probes: the MLP of scripts/mnist_mlp.flags
    pairs = [line for line in out.splitlines() if line.startswith("mlp: G ")]
    assert len(pairs) == len(study.ROWS) - 1 and len(set(pairs)) == 2
    assert pairs.count("mlp: G 0.66M parameters, D 0.39M parameters") == sum(row[1] in (0, 1, 2, 4) for row in study.ROWS)
    # the reduced NCSN++ pair that docs/performance.md timed (scripts/bench_train.py's mnist_ncsnpp)
    assert "ncsnpp: G 0.42M parameters, D 0.19M parameters" in out


def test_a_later_stage_without_its_tuning_runs_is_a_usage_error(tmp_path, capsys):
    study = load_study()
    with pytest.raises(SystemExit) as exit_:
        study.main(["--out", str(tmp_path), "--datadir", str(tmp_path), "--rows", "uotm_kl"])
    assert exit_.value.code == 2
    assert "stage 1 needs the tuning runs of uotm (stage 0)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")   # nothing ran


def test_the_tables_name_the_chosen_rate_and_stand_beside_the_floor():
    study = load_study()
    hi, lo = study.LEARNING_RATES
    floor = mnist_floor(study)
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)})
    records += [run("uotm_kl", s, [40.0, 30.0, 20.0, 10.0 + s], floor=floor) for s in range(3)]
    tuning = study.results_table(records, 0)
    assert f"| tune_gan_lr{lo:g} | tuning: gan at lr {lo:g} | 1 | 20.00 |" in tuning
    assert tuning.count("(chosen)") == 3 and f"| {lo:g} (chosen) |" in tuning.split(f"tune_gan_lr{lo:g}")[1]
    main = study.results_table(records, 1).splitlines()
    assert main[2].startswith("| floor: mnist | 2,000 held-out real images (mnist_fd) | 10 | 1.70 +- 0.18 |")
    assert main[3].startswith("| uotm_kl | UOTM (kl, kl) (exp), EMA | 3 | 11.00 +- 1.00 |")
    assert f"| {hi:g} (uotm's tuning) |" in main[3] and "not converged" in main[3]   # falling by 10 a save
    assert study.results_table(records, 2) == ""


def test_the_course_reports_rows_stand_beside_the_same_configuration_at_half_and_full_length():
    """Each of the report's rows beside the study's row of its configuration: mnist_fd at the save
    of half the epochs and at the last, mean +- sd over the runs that reached it (a diverged run
    counts in neither), and the floor at the same n."""
    study = load_study()
    floor = mnist_floor(study)
    saves = study.EPOCHS // study.SAVE_EVERY
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)})
    records += [run("uotm_softplus", s, [100.0 - i - 10 * s for i in range(saves)], floor=floor) for s in range(2)]
    records.append(run("uotm_softplus", 2, [], diverged=True))
    lines = study.course_report_table(records).splitlines()
    assert lines[0].startswith(f"| course report: row | its epochs | its FID | this study: row | mnist_fd at epoch "
                               f"{study.EPOCHS // 2} | mnist_fd at epoch {study.EPOCHS} | floor (n = 2,000) |")
    half = 100.0 - (saves // 2 - 1)   # the save of epoch EPOCHS / 2, seed 0; seed 1 is 10 lower
    assert lines[3] == (f"| UOT baseline | 60 | 35.6 | uotm_softplus | {half - 5:.2f} +- 7.07 (2) | "
                        f"{100.0 - (saves - 1) - 5:.2f} +- 7.07 (2) | 1.70 +- 0.18 |")
    assert lines[2] == "| GAN baseline | n/a | 29.78 | gan | n/a (0) | n/a (0) | 1.70 +- 0.18 |"
    assert study.course_report_table(tuned(study, {"gan": (30.0, 20.0)})) == ""   # no floor: no table


@pytest.mark.parametrize("share, fair", [(0.0, True), (0.019, True), (0.021, False)])
def test_the_outlier_comparison_is_fair_only_at_most_twice_the_outliers_share(share, fair):
    study = load_study()
    near = dict(share=share, outlier_share=0.01, draws=50000, seed=0)
    line = study.fairness([run("outliers_uotm", 0, [1.0], nearest_source=near)])
    assert ("fair (at most 2x)" in line) == fair and ("NOT fair" in line) == (not fair)
    assert study.fairness([run("uotm_kl", 0, [1.0])]) == ""


def test_the_flags_file_is_the_mlp_pair_without_a_dataset_or_learning_rate():
    study = load_study()
    flags = shlex.split(study.MLP)
    assert "--model_name" in flags and not {"--dataset", "--lr_g", "--lr_d", "--seed"} & set(flags)


def test_the_results_page_shows_the_recorded_study_as_the_script_prints_it():
    """docs/results.md's MNIST study tables are page() of the committed records: no number on the
    page is typed by hand; every record is a run of a row of the study at one of its seeds."""
    study = load_study()
    records, best = (study.read_jsonl(os.path.join(ROOT, "assets", f"study_mnist_{name}.jsonl"))
                     for name in ("runs", "best_saves"))
    assert records and all(r["seed"] in study.ROW[r["row"]][6] for r in records)
    assert len({(r["row"], r["seed"]) for r in study.view(records)}) == len(records)   # one run per row and seed
    # a best-save record for every finished run of the rule's rows, and for nothing else
    assert sorted((b["row"], b["seed"]) for b in best) == sorted(
        (r["row"], r["seed"]) for r in study.view(records) if r["row"] in study.BEST_SAVE_ROWS and not r["diverged"])
    with open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8") as f:
        assert study.page(records, best) in f.read()


def test_a_stage_runs_again_at_the_next_rate_when_the_rule_abandons_one(tmp_path, monkeypatch):
    """The command itself, its runs replaced by records (uot/study.py's runner is run for real by
    tests/test_study.py): every kl run at the best rate diverges, so after stage 1's first pass
    the rule moves UOTM's rows to the next rate and the stage runs again, once; a second
    invocation runs nothing."""
    from uot import study as runner
    study = load_study()
    hi, lo = study.LEARNING_RATES
    with open(tmp_path / "runs.jsonl", "w") as f:
        for r in tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)}):
            f.write(json.dumps(r) + "\n")
    calls = []

    def fake_run(name, seed, argv, run_dir, out):
        lr = study.rate_of({"flags": shlex.join(argv)})
        calls.append((name, seed, lr, os.path.basename(run_dir)))
        last = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}   # the last wins
        diverged = last.get("--phi1") == "kl" and lr == hi
        os.makedirs(run_dir)   # empty: the sample figure shows no grid for it
        return run(name, seed, [50.0, 40.0, 30.0, 20.0 + seed], diverged=diverged, lr=lr,
                   run_dir=os.path.relpath(run_dir, out), floor=floor)

    floor = mnist_floor(study)
    monkeypatch.setattr(runner, "train_run", fake_run)
    rows = ["uotm_kl", "uotm_softplus", "gan"]
    args = ["--out", str(tmp_path), "--datadir", str(tmp_path), "--rows", *rows, "--seeds", "3", "--jobs", "1"]
    study.main(args)
    first = [(name, seed, lr) for name, seed, lr, _ in calls]
    assert first[:9] == [(name, seed, lr) for seed in range(3) for name, lr in
                         (("gan", lo), ("uotm_kl", hi), ("uotm_softplus", hi))]   # the first pass, seed-major
    assert sorted(first[9:]) == sorted((name, seed, lo) for seed in range(3) for name in ("uotm_kl", "uotm_softplus"))
    assert {d for name, _, lr, d in calls if lr == lo and name != "gan"} == \
        {f"{name}_lr{lo:g}_seed{seed}" for seed in range(3) for name in ("uotm_kl", "uotm_softplus")}
    page = (tmp_path / "results.md").read_text()
    assert f"| uotm_kl_lr{hi:g} |" in page and f"| 3/3 | {hi:g} (abandoned) |" in page
    assert "| uotm_kl | UOTM (kl, kl) (exp), EMA | 3 | 21.00 +- 1.00 |" in page
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "samples.png").stat().st_size > 0
    calls.clear()
    study.main(args)
    assert calls == []


def test_the_best_save_is_the_lowest_recorded_one_measured_again_on_new_noise(tmp_path, monkeypatch):
    """best_save on a real run (a tiny MLP on the digits with inverted outliers, 3 saves): it
    loads the save with the lowest recorded fd; with the saves' own noise it gives that save's
    recorded measures to the last bit (the right weights, noise and measure), and with its own
    noise (seed + EVAL_SEED_OFFSET) other samples of the same map."""
    from tiny import run as train_run, run_dir
    study = load_study()
    flags = ("--dataset digits+outliers --image_size 8 --model_name mlp --mlp_width 32 --mlp_depth 1 --nz 2 "
             "--batch_size 64 --num_epoch 3 --save_image_every 1 --save_ckpt_every 1 --measure_samples 200 "
             "--log_every 100 --seed 3")
    assert train_run(flags, tmp_path) == 0
    folder = run_dir(tmp_path, "digits+outliers")
    monkeypatch.setattr(study, "SAVE_EVERY", 1)
    monkeypatch.setitem(study.ROW, "t", ("t", 4, "a tiny run", "digits+outliers", None, "", (3,)))
    monkeypatch.setitem(study.FD, "digits+outliers", "digits_fd")
    saves = json.loads((folder / "metrics.json").read_text())
    record = dict(row="t", seed=3, diverged=False, saves=saves)
    lowest = min(range(3), key=lambda i: saves[i]["digits_fd"])
    best = study.best_save(record, str(folder), None)
    assert (best["epoch"], best["last_epoch"], best["samples"]) == (lowest + 1, 3, 200)
    assert best["selected"] == saves[lowest]["digits_fd"] and best["noise_seed"] == 3 + study.EVAL_SEED_OFFSET
    assert best["digits_fd"] != saves[lowest]["digits_fd"] and "outlier_fraction" in best
    monkeypatch.setattr(study, "EVAL_SEED_OFFSET", 0)
    again = study.best_save(record, str(folder), None)
    assert {k: again[k] for k in saves[lowest] if k not in ("step", "phase")} == \
        {k: v for k, v in saves[lowest].items() if k not in ("step", "phase")}


def best(row, seed, epoch, outliers, fd=50.0, last_epoch=24):
    return dict(row=row, seed=seed, epoch=epoch, last_epoch=last_epoch, selected=fd, samples=2000,
                noise_seed=seed + 1000, fashion_mnist_fd=fd, precision=0.5, recall=0.1, outlier_fraction=outliers)


def test_the_best_save_rule_gives_verdicts_to_rows_past_their_best_save_holm_adjusted_with_the_page():
    """The stage-4 comparisons read the `@best` values; a row qualifies when it is converged by the
    slope rule or past its best save on a majority of seeds; their p-values join the page's Holm
    family (m counts every comparison with runs on both sides)."""
    study = load_study()
    fd = [200.0, 150.0, 120.0, 100.0, 95.0, 110.0, 130.0, 160.0]   # turns up: the slope rule fails
    records = tuned(study, {"gan": (30.0, 20.0), "uotm": (10.0, 50.0), "otm": (5.0, 6.0)})
    records += [run(row, s, [v + s for v in fd], key="fashion_mnist_fd") for s in study.CONFIRM_SEEDS
                for row in ("confirm_outliers_uotm", "confirm_outliers_otm")]
    bests = [best("confirm_outliers_uotm", s, 10, 0.0) for s in study.CONFIRM_SEEDS]
    bests += [best("confirm_outliers_otm", s, 10 if s < 8 else 24, 0.003 + s / 10000) for s in study.CONFIRM_SEEDS]
    lines = {line.split(" | ")[0][2:]: line for line in study.compare(records, bests)}
    held = lines["UOTM paper: UOTM generates fewer outliers than OTM (best saves, new seeds)"]
    assert "| confirm_outliers_uotm@best | confirm_outliers_otm@best | outlier_fraction |" in held
    assert "not converged; past its best save on 5/5 / " in held and "past its best save on 3/5 |" in held
    assert held.endswith("| held |")
    header = study.compare(records, bests)[0]
    assert "Holm p (m = 2)" in header   # the two stage-4 lines with runs on both sides (no clean_uotm runs here)
    bests = [b if b["row"] != "confirm_outliers_otm" or b["seed"] < 7 else dict(b, epoch=24) for b in bests]
    lines = {line.split(" | ")[0][2:]: line for line in study.compare(records, bests)}
    line = lines["UOTM paper: UOTM generates fewer outliers than OTM (best saves, new seeds)"]
    assert "past its best save on 2/5 |" in line and line.endswith("| held, but a row is not converged: no verdict |")
    table = study.best_save_table(records, bests)
    assert "| confirm_outliers_otm | 5 | 10 10 24 24 24 |" in table and "| 2/5 |" in table
