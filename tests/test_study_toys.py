"""scripts/study_toys_exact.py: the papers' toy commands as written, seeded, against exact UOT."""
import importlib.util
import json
import os

from tiny import ROOT


def load():
    spec = importlib.util.spec_from_file_location("study_toys_exact",
                                                  os.path.join(ROOT, "scripts", "study_toys_exact.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_runs_its_published_script_with_the_seed_and_a_folder_of_its_own(tmp_path):
    study = load()
    for row in study.ROWS:
        argv, env, run = study.command(row, 3, str(tmp_path))
        script = os.path.join(ROOT, argv[1])
        assert argv[0] == "bash" and os.path.isfile(script) and argv[argv.index("--seed") + 1] == "3"
        assert run.endswith(f"{row[0]}_seed3") and env["OMP_NUM_THREADS"] == "1"
        assert all(env[k] == v for k, v in row[3].items())
        text = open(script, encoding="utf-8").read()
        assert '"$@"' in text   # the added flags reach the trainer, after the script's own
    assert len({row[0] for row in study.ROWS}) == len(study.ROWS)


def test_a_smoke_study_trains_solves_tabulates_and_never_reruns_a_finished_run(tmp_path, capsys):
    """The outlier command shortened to 2 epochs (--flags), one seed: trained, solved exactly,
    recorded with its versions and CPU; the table holds the row; a second call runs nothing."""
    study = load()
    out = str(tmp_path / "study")
    study.main(["--out", out, "--rows", "outlier", "--seeds", "1", "--jobs", "1", "--n", "300",
                "--flags", "--epochs 2 --save_every 2"])
    (record,) = [json.loads(line) for line in open(os.path.join(out, "runs.jsonl"))]
    assert record["exit_code"] == 0 and "--epochs 2" in record["command"] and record["pot"] and record["cpu"]
    line = record["exact"]
    assert line["trainer"] == "train_toy.py" and line["epoch"] == 2 and line["exact"]["gap"] < 1e-7
    assert line["exact"]["divergence"] <= line["exact"]["bound"]
    assert line["learned"]["w1_to_exact"] > 2 * line["floor"]["w1_exact_to_exact"]   # 2 epochs: far from exact
    table = open(os.path.join(out, "table.md")).read()
    assert "| outlier |" in table and "| 0/1 |" in table
    capsys.readouterr()
    study.main(["--out", out, "--rows", "outlier", "--seeds", "1", "--jobs", "1"])
    assert "1 runs done, 0 to run" in capsys.readouterr().out
    assert len(open(os.path.join(out, "runs.jsonl")).readlines()) == 1
