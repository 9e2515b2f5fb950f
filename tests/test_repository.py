"""The repository stands alone: no tracked file points outside it."""
import os
import re
import subprocess

from tiny import ROOT

# Written in pieces so that this file does not match its own patterns.
OUTSIDE = [
    re.escape(".." + "/shared"),                          # a folder beside the clone
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
    for text in ["open('../" "shared/seeds')", "--outdir /" "work/main/train_logs", "/" "home/me/data",
                 "C:\\" "Users\\me"]:
        assert pattern.search(text), text
    for text in ["--datadir data/cifar10", "https://github.com/Jae-Moo/UOTM", "$HOME/.cache/uotm",
                 "~/.cache/x", "train_logs/digits/demo"]:
        assert not pattern.search(text), text
