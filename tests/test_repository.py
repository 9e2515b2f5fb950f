"""The repository stands alone: no tracked file points outside it."""
import os
import re
import subprocess

from tiny import ROOT

# Written in pieces so that this file does not match its own patterns.
OUTSIDE = [
    re.escape(".." + "/shared"),                          # a folder beside the clone
    r"""['"]\.\.['"],\s*['"]""" + "shared",                # ... also when joined with os.path.join
    r"(?<![\w.~$/-])/(?:" + "work|home|root|Users|mnt" + r")/[\w.-]+",   # absolute paths of a machine
    r"\b[A-Z]:\\" + "Users",
]
BINARY = (".png", ".jpg", ".npz", ".pt", ".pth")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):   # not a git checkout: walk the tree
        skip = {".git", ".venv", "train_logs", "__pycache__", ".pytest_cache"}
        files = []
        for parent, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [os.path.relpath(os.path.join(parent, name), ROOT) for name in names]
        return files


def test_no_tracked_file_refers_outside_the_repository():
    pattern = re.compile("|".join(OUTSIDE))
    hits = []
    for name in tracked_files():
        if name.endswith(BINARY):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if pattern.search(line):
                    hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    pattern = re.compile("|".join(OUTSIDE))
    for text in ["open('../" "shared/seeds')", 'os.path.join(ROOT, "..", "sha' 'red", "seeds")',
                 "--outdir /" "work/main/train_logs", "/" "home/me/data",
                 "C:\\" "Users\\me"]:
        assert pattern.search(text), text
    for text in ["--datadir data/cifar10", "https://github.com/Jae-Moo/UOTM", "$HOME/.cache/uotm",
                 "~/.cache/x", "train_logs/digits/demo"]:
        assert not pattern.search(text), text


def imported_modules(path):
    """Top-level names of every module `path` imports (absolute imports, anywhere in the file)."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_uot_knows_no_dataset_network_or_script():
    """uot/ is the math and the plumbing: it imports nothing of datasets_prep/, score_sde/ or the
    scripts, which all build on it (the rule of uot/__init__.py)."""
    forbidden = {"datasets_prep", "score_sde", "train", "train_toy", "test", "utils", "scripts"}
    uot = os.path.join(ROOT, "uot")
    offenders = {name: sorted(imported_modules(os.path.join(uot, name)) & forbidden)
                 for name in os.listdir(uot) if name.endswith(".py")}
    assert not {k: v for k, v in offenders.items() if v}, offenders
    # and the networks know no dataset
    score_sde = os.path.join(ROOT, "score_sde")
    for name in os.listdir(score_sde):
        if name.endswith(".py"):
            assert not imported_modules(os.path.join(score_sde, name)) & (forbidden - {"uot"}), name
