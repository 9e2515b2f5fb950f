"""scripts/study_digits.py on a tiny grid, its verdicts and its page."""
import importlib.util
import json
import os
import statistics

import pytest

from tiny import ROOT


def load_study():
    spec = importlib.util.spec_from_file_location("study_digits", os.path.join(ROOT, "scripts", "study_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_of_the_study_is_a_valid_train_py_command(tmp_path, capsys):
    import train
    study = load_study()
    names = [row[0] for row in study.ROWS]
    assert len(names) == len(set(names)) >= 20
    for row in study.ROWS:
        argv, run_dir = study.row_argv(row, 0, str(tmp_path))
        if row[5] is not None:   # stage 2 reads its start at run time; the dry run only needs the file
            init = argv[argv.index("--init_from") + 1]
            assert init.endswith(os.path.join(f"{row[5]}_seed0", "content.pth"))
            os.makedirs(os.path.dirname(init), exist_ok=True)
            open(init, "w").close()
        assert train.main(argv + ["--dry_run"]) == 0, row[0]
    out = capsys.readouterr().out
    # the main rows and stage 2 train the MLP pair, the cross-check the NCSN++ one, at 5 and 3 seeds
    assert out.count("mlp: G 0.60M parameters, D 0.56M parameters") == sum(row[1] != "NCSN++" for row in study.ROWS)
    assert all(row[4] == (3 if row[1] == "NCSN++" else 5) for row in study.ROWS)


TINY_MLP = "--dataset digits_train --model_name mlp --mlp_width 16 --mlp_depth 1 --nz 2 --batch_size 256 --log_every 1"


@pytest.mark.slow
def test_the_study_runs_its_stages_then_continues_without_rerunning_anything(tmp_path, monkeypatch):
    """A tiny grid in the study's runner: a UOTM row, an S-JKO row started from its runs (stage
    2), two seeds; a second invocation runs only what the first did not."""
    study = load_study()
    monkeypatch.setattr(study, "ROWS", [
        ("jko", "S-JKO", "from a", f"{TINY_MLP} --num_phase 2 --init_num_iterations 0 --num_iterations 3 --phi2 kl "
         "--ema --save_image_every 3", 2, "a"),
        ("a", "main", "UOTM", f"{TINY_MLP} --num_epoch 1 --save_image_every 1", 2, None)])
    study.main(["--out", str(tmp_path), "--seeds", "1"])
    records = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert [(r["row"], r["seed"]) for r in records] == [("a", 0), ("jko", 0)]   # stage 1 first
    for r in records:
        assert r["exit_code"] == 0 and not r["diverged"] and r["seconds"] > 0 and r["cpu"] and r["torch"]
        assert {"digits_fd", "precision", "outlier_fraction"} <= set(r["saves"][-1])
    assert records[0]["saves"][-1]["step"] == 1437 // 256 and records[1]["saves"][-1]["step"] == 3
    log = (tmp_path / records[1]["run_dir"] / "log.txt").read_text()
    assert "networks from " + str(tmp_path / "runs" / "digits_train" / "a_seed0" / "content.pth") in log
    table = (tmp_path / "results.md").read_text()
    assert "| a |" in table and "| jko |" in table and "| 0/1 |" in table   # none diverged
    assert (tmp_path / "samples.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0
    study.main(["--out", str(tmp_path)])   # all seeds: only the second seed of each row is new
    again = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert again[:2] == records and sorted((r["row"], r["seed"]) for r in again[2:]) == [("a", 1), ("jko", 1)]


def fake_runs(row, finals, drift=0.0):
    """Records of `row` with four saves each (steps 0-3), the last at each of `finals`, the ones
    before it `drift`, 2 `drift` and 3 `drift` above it (the slope rule's drift: -3 `drift`)."""
    return [{"row": row, "diverged": False,
             "saves": [{"step": i, "digits_fd": v + (3 - i) * drift} for i in range(4)]} for v in finals]


@pytest.mark.parametrize("a, b, claim, verdict", [
    ([1, 2, 3], [4, 5, 6], True, "held"),              # Welch t = -3.67, 4 df: p = 0.0213
    ([4, 5, 6], [1, 2, 3], True, "contradicted"),
    ([4, 5, 6], [1, 2, 3], False, "held"),           # a claim that A is higher (recall)
    ([1, 2, 3], [4, 5, 6], None, "differ: the first lower"),
    ([1, 2, 3], [2, 3, 4], True, "no difference detected (n = 3, 3)"),   # p = 0.29
])
def test_a_verdict_needs_welch_p_below_005_and_says_n_otherwise(a, b, claim, verdict, monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("a", "b", "digits_fd", "a claim", claim)])
    header, rule, line = study.compare(fake_runs("a", a) + fake_runs("b", b))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "a claim" and cells[-1] == verdict
    assert cells[4] == f"{statistics.mean(a):.2f} +- 1.00 (3)" and cells[6] == "+0.0% (p 1) / +0.0% (p 1)"
    p = "0.021" if abs(statistics.mean(a) - statistics.mean(b)) == 3 else "0.29"
    assert cells[7] == cells[8] == p   # one comparison: Holm changes nothing
    assert "Holm p (m = 1)" in header


def test_holm_multiplies_the_smallest_p_by_m_and_keeps_the_order():
    from uot.study import holm
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_holm_turns_a_verdict_of_one_comparison_among_many_into_no_difference(monkeypatch):
    """p = 0.021 alone is a verdict; the same comparison beside three others with p ~ 1 is
    multiplied by 4 (0.085): no difference detected."""
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("a", "b", "digits_fd", "a claim", True)] +
                        [("c", "c", "digits_fd", f"same {i}", None) for i in range(3)])
    lines = study.compare(fake_runs("a", [1, 2, 3]) + fake_runs("b", [4, 5, 6]) + fake_runs("c", [1, 2, 3]))
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[7] == "0.021" and cells[8] == "0.085" and cells[-1] == "no difference detected (n = 3, 3)"


def test_the_slope_rule_calls_a_row_flat_only_when_its_drift_is_within_noise():
    study = load_study()
    # the last saves fall by 3 on every seed (a real drift, larger than the seeds' spread): not flat
    drift, p, flat = study.convergence(fake_runs("a", [10, 11, 12], drift=1.0), "a")
    assert drift == pytest.approx(-3 / 11) and p == 0.0 and not flat
    # drifts of -6, +1, -4 (mean -3, p 0.29) larger than the finals' spread (sd 1): not flat either
    runs = fake_runs("a", [10], drift=2) + fake_runs("a", [11], drift=-1 / 3) + fake_runs("a", [12], drift=4 / 3)
    drift, p, flat = study.convergence(runs, "a")
    assert drift == pytest.approx(-3 / 11) and p == pytest.approx(0.286, abs=1e-3) and not flat
    # the same finals with drifts of -0.3, +0.3, -0.15: flat
    runs = fake_runs("a", [10], drift=0.1) + fake_runs("a", [11], drift=-0.1) + fake_runs("a", [12], drift=0.05)
    assert study.convergence(runs, "a")[2]
    # a consistent drift smaller than the standard error of the mean final (sd 1 / sqrt 3): flat
    assert study.convergence(fake_runs("a", [10, 11, 12], drift=0.15), "a")[2]
    assert study.convergence([{"row": "a", "diverged": False, "saves": [{"digits_fd": 1}] * 3}], "a") is None


def test_no_verdict_for_a_row_whose_curve_still_moves(monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("a", "b", "digits_fd", "a claim", True)])
    line = study.compare(fake_runs("a", [1, 2, 3], drift=4) + fake_runs("b", [4, 5, 6]))[-1]
    assert "-600.0% (p 0) not converged / +0.0% (p 1)" in line
    assert line.endswith("held, but a row is not converged: no verdict |")


def test_the_gan_side_of_a_comparison_is_the_best_of_the_tuned_gans(monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("uotm_kl", "best_gan", "digits_fd", "vs the best GAN", True)])
    records = fake_runs("uotm_kl", [1, 2, 3]) + fake_runs("gan", [40, 41, 42]) + \
        fake_runs("gan_dcgan_opt", [20, 21, 22]) + fake_runs("gan_r1_1", [30, 31, 32])
    assert study.best_gan(records) == "gan_dcgan_opt"
    assert "| uotm_kl | gan_dcgan_opt |" in study.compare(records)[-1]


def test_the_results_page_shows_the_recorded_study_as_the_script_prints_it():
    """docs/results.md's study tables are results_table() and compare() of the committed
    records, every row at its number of seeds: no number on the page is typed by hand."""
    study = load_study()
    with open(os.path.join(ROOT, "assets", "study_digits_runs.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert sorted((r["row"], r["seed"]) for r in records) == sorted(
        (row[0], seed) for row in study.ROWS for seed in range(row[4]))
    with open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8") as f:
        page = f.read()
    sweep = [row for row in study.ROWS if row[1] == "tau sweep"]
    assert study.results_table(records, [row for row in study.ROWS if row not in sweep]) in page
    assert study.results_table(records, sweep) in page   # the tau sweep's own section
    assert "\n".join(study.compare(records)) in page
