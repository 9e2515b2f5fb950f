"""The digits measure (datasets_prep.digits_eval) and scripts/study_digits.py on a tiny grid."""
import importlib.util
import json
import os
import statistics

import pytest
import torch
import torch.nn.functional as F

from datasets_prep import digits_eval
from tiny import ROOT


def test_the_classifier_reads_digits():
    net, real_stats = digits_eval.load_classifier()
    images, labels = digits_eval.real_digits()
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.97   # 98.9% on the 360 held-out digits when trained (docs/results.md)


def test_the_measure_ranks_real_above_blurred_above_noise_and_sees_missing_classes():
    images, labels = digits_eval.real_digits()
    real = digits_eval.digits_metrics(images)
    assert real["digits_fd"] < 1e-3 and real["classes_covered"] == 10 and real["class_entropy"] > 0.99
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    half = digits_eval.digits_metrics(images[: len(images) // 2])["digits_fd"]
    assert half < 20 < digits_eval.digits_metrics((images + blurred) / 2)["digits_fd"]
    assert digits_eval.digits_metrics(noise)["digits_fd"] > 200
    ones = digits_eval.digits_metrics(images[labels == 1])
    assert ones["classes_covered"] == 1 and ones["class_entropy"] < 0.1 and ones["digits_fd"] > 200
    # the inverted digits of digits+outliers are outliers; the digits are not
    assert digits_eval.digits_metrics(images, outliers="inverted")["outlier_fraction"] == 0.0
    assert digits_eval.digits_metrics(-images, outliers="inverted")["outlier_fraction"] == 1.0


@pytest.fixture(scope="module")
def controls():
    """Every measure on every control of digits_eval.controls() (360 images each; 185 for the 5 classes)."""
    return {name: digits_eval.digits_metrics(images) for name, images in digits_eval.controls().items()}


# Tolerances: a share over n = 360 samples has a binomial sd of at most 0.026 (0.016 at 0.9);
# the bounds below sit 4 sd or more from the expected values, and hold for classifiers
# trained from other seeds (as another machine's floating point may train a different one).

def test_held_out_digits_rank_best_and_score_the_real_level(controls):
    real = controls["real held-out digits"]
    others = {name: m for name, m in controls.items() if name not in ("real held-out digits", "copies of training digits")}
    assert real["digits_fd"] < 20 and all(real["digits_fd"] < m["digits_fd"] for m in others.values())
    # new real digits lie on the training digits' manifold and cover it
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert real["classes_covered"] == 10 and real["class_entropy"] > 0.95
    # by construction the ratio is 1 on the digits that calibrate it
    assert real["train_distance_ratio"] == pytest.approx(1.0)


def test_the_memorisation_ratio_flags_copies_and_only_copies(controls):
    copies = controls["copies of training digits"]
    # digits_fd, precision and recall cannot tell copies from new digits
    assert copies["digits_fd"] < 20 and copies["precision"] > 0.8 and copies["recall"] > 0.8
    assert copies["train_distance_ratio"] < 0.1
    assert all(m["train_distance_ratio"] > 0.5 for name, m in controls.items() if name != "copies of training digits")


def test_recall_sees_single_images_and_missing_classes(controls):
    real, single = controls["real held-out digits"], controls["one held-out image per class, repeated"]
    assert single["classes_covered"] == 10 and single["recall"] < 0.05   # every class, but one image each
    five = controls["5 classes only (held-out 0-4)"]
    assert five["classes_covered"] == 5 and five["recall"] < real["recall"] - 0.15


def test_the_reject_accepts_real_digits_at_the_calibrated_rate_and_rejects_noise(controls):
    reference = digits_eval.reference()
    # the threshold is the 99th percentile of held-out digits: about 1% false rejects, also on
    # held-out digits that did not set it (binomial sd 0.009 on 180 digits at 1.5%)
    assert controls["real held-out digits"]["accepted_share"] >= digits_eval.REJECT_QUANTILE - 1 / 360
    assert reference["false_reject"] < 0.06
    assert controls["copies of training digits"]["accepted_share"] > 0.95
    for name in ("clamped Gaussian noise", "inverted held-out digits (-x)"):
        m = controls[name]
        assert m["accepted_share"] < 0.02 and m["classes_covered"] == 0 and m["class_entropy"] < 0.05, name
        # in features, noise lands nearer the digits for some classifiers than others (0.003 to
        # 0.056 precision over five training seeds): far below real digits all the same
        assert m["precision"] < 0.2 and m["train_distance_ratio"] > 2, name
    assert controls["inverted held-out digits (-x)"]["digits_fd"] > 10 * controls["real held-out digits"]["digits_fd"]


def test_the_controls_and_the_measure_leave_the_global_random_stream_alone():
    state = torch.random.get_rng_state()
    for images in digits_eval.controls(seed=1).values():
        digits_eval.digits_metrics(images)
    assert torch.equal(state, torch.random.get_rng_state())


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


@pytest.mark.parametrize("share, covered", [([1.0] + [0.0] * 9, 1), ([0.1] * 10, 10), ([0.5, 0.49, 0.01] + [0] * 7, 2)])
def test_class_coverage_counts_classes_with_two_percent(share, covered, monkeypatch):
    # digits_metrics on fake logits: the predicted classes come in the given shares
    counts = [round(s * 1000) for s in share]
    classes = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    net, stats = digits_eval.load_classifier()

    class Fixed(torch.nn.Module):
        def forward(self, features):
            return F.one_hot(classes, 10).float()

    monkeypatch.setitem(digits_eval._loaded, "net", torch.nn.Sequential(*net[:-1], Fixed()))
    images = digits_eval.real_digits()[0][: len(classes)]
    assert digits_eval.digits_metrics(images)["classes_covered"] == covered


def fake_runs(row, finals, previous=None):
    """Records of `row` whose last save is each of `finals` (and the one before, `previous`)."""
    return [{"row": row, "diverged": False, "saves": [{"digits_fd": previous or v}, {"digits_fd": v}]}
            for v in finals]


@pytest.mark.parametrize("a, b, claim, verdict", [
    ([1, 2, 3], [4, 5, 6], True, "held"),              # Welch t = -3.67, 4 df: p = 0.0213
    ([4, 5, 6], [1, 2, 3], True, "contradicted"),
    ([4, 5, 6], [1, 2, 3], False, "held"),           # a claim that A is higher (recall)
    ([1, 2, 3], [4, 5, 6], None, "differ: the first lower (p < 0.05)"),
    ([1, 2, 3], [2, 3, 4], True, "no difference detected (n = 3, 3)"),   # p = 0.29
])
def test_a_verdict_needs_welch_p_below_005_and_says_n_otherwise(a, b, claim, verdict, monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("a", "b", "digits_fd", "a claim", claim)])
    header, rule, line = study.compare(fake_runs("a", a) + fake_runs("b", b))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "a claim" and cells[-1] == verdict
    assert cells[4] == f"{statistics.mean(a):.2f} +- 1.00 (3)" and cells[6] == "0.0% / 0.0%"
    assert cells[7] == ("0.021" if abs(statistics.mean(a) - statistics.mean(b)) == 3 else "0.29")


def test_no_verdict_for_a_row_whose_curve_still_moves(monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("a", "b", "digits_fd", "a claim", True)])
    # a's seed mean went 10 -> 2 over its last two saves: 80% change, not flat
    line = study.compare(fake_runs("a", [1, 2, 3], previous=10) + fake_runs("b", [4, 5, 6]))[-1]
    assert "80.0% / 0.0%" in line and line.endswith("held, but a row is not converged: no verdict |")


def test_the_gan_side_of_a_comparison_is_the_best_of_the_tuned_gans(monkeypatch):
    study = load_study()
    monkeypatch.setattr(study, "COMPARISONS", [("uotm_kl", "best_gan", "digits_fd", "vs the best GAN", True)])
    records = fake_runs("uotm_kl", [1, 2, 3]) + fake_runs("gan", [40, 41, 42]) + \
        fake_runs("gan_dcgan_opt", [20, 21, 22]) + fake_runs("gan_r1_1", [30, 31, 32])
    assert study.best_gan(records) == "gan_dcgan_opt"
    assert "| uotm_kl | gan_dcgan_opt |" in study.compare(records)[-1]


def test_the_shape_detector_finds_new_shapes_and_passes_digits():
    rates = digits_eval.shape_detector_rates()
    # 2,000 new shapes and 360 held-out digits: 0.99 / 0.01 sit 4 binomial sd or more from 1 / 0
    assert rates["true-positive rate, new shapes"] >= 0.99
    assert rates["true-positive rate, new shapes half blurred"] >= 0.9
    assert rates["false-positive rate, held-out digits"] <= 0.01
    images = digits_eval.real_digits()[0]
    assert digits_eval.digits_metrics(images, outliers="shapes")["outlier_fraction"] < 0.01


def test_the_shapes_are_a_fair_outlier_set_and_inverted_digits_are_not():
    """The share of N(0, I) draws whose nearest image is an outlier, over the outliers' share:
    the shapes' is at most 2 (measured 1.4x); the inverted digits' is 31x (their isolated
    cluster). With 50,000 draws the share's sd is under 0.001."""
    share, outliers = digits_eval.nearest_source_share("digits_train+shapes")
    assert outliers == pytest.approx(15 / 1452) and share <= 2 * outliers
    share, outliers = digits_eval.nearest_source_share("digits+outliers")
    assert outliers == pytest.approx(18 / 1815) and share > 10 * outliers


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
    assert study.results_table(records, study.ROWS) in page
    assert "\n".join(study.compare(records)) in page
