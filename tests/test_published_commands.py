"""Every training command of the two papers' READMEs runs here as written.

The commands are quoted in tests/data/published_commands.txt (with their sources); each
one is checked twice: it parses, resolves and builds its networks (--dry_run), and the
script of the same name in scripts/ runs exactly the same configuration.
"""
import itertools
import os
import re
import shlex

import pytest

import train
import train_toy
from tiny import DATA, ROOT

PLACEHOLDER = re.compile(r"\{([^}]*)\}")


def published_commands():
    """[(source, name, command)] from tests/data/published_commands.txt."""
    commands = []
    with open(os.path.join(DATA, "published_commands.txt"), encoding="utf-8") as f:
        for line in f:
            match = re.fullmatch(r"\[(\w+)\] (\w+): (python .*)", line.strip())
            if match:
                commands.append(match.groups())
    return commands


def expansions(command):
    """[(values, command)] for every choice of the README's `{a,b,c}` placeholders. Equal
    placeholders take the same value (--phi1 {kl,..} --phi2 {kl,..}: kl/kl, chi/chi, ...)."""
    placeholders = list(dict.fromkeys(PLACEHOLDER.findall(command)))
    choices = [p.split(",") for p in placeholders]
    result = []
    for values in itertools.product(*choices):
        chosen = dict(zip(placeholders, values))
        result.append((chosen, PLACEHOLDER.sub(lambda m: chosen[m.group(1)], command)))
    return result


COMMANDS = published_commands()
TRAIN = [(name, chosen, cmd) for _, name, command in COMMANDS if command.startswith("python train.py ")
         for chosen, cmd in expansions(command)]


def test_the_readmes_hold_eleven_training_commands():
    sources = [source for source, _, _ in COMMANDS]
    assert sources.count("uotm") == 5 and sources.count("sjko") == 6   # 2 toy + 3 image; 3 toy + 3 image
    assert len(TRAIN) == 6 + 6 + 6 + 3 + 1 + 3 + 3   # each placeholder choice is one configuration


def flags_of(command, program):
    return shlex.split(command.split(program, 1)[1])


@pytest.mark.parametrize("name, chosen, command", TRAIN, ids=[f"{n}-{'-'.join(c.values())}" for n, c, _ in TRAIN])
def test_published_train_command_runs_as_written(name, chosen, command, capsys):
    assert train.main(flags_of(command, "train.py") + ["--dry_run", "--device", "cpu"]) == 0
    assert "parameters" in capsys.readouterr().out


@pytest.mark.parametrize("name, command", [(n, c) for _, n, c in COMMANDS if "train_toy.py" in c])
def test_published_toy_command_parses_and_validates(name, command):
    args = train_toy.parse_args(flags_of(command, "train_toy.py"))
    train_toy.validate(args)
    assert args.savepath.startswith("train_logs/")


def script_command(name, program):
    """The command line of scripts/<name>.sh, continuations joined, without its "$@"."""
    with open(os.path.join(ROOT, "scripts", f"{name}.sh"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if f"{program} " in line and not line.startswith("#"))
    return program + " " + line.split(f"{program} ", 1)[1].replace('"$@"', "")


def resolved(program, flags):
    if program == "train.py":
        return vars(train.resolve_args(train.build_parser().parse_args(flags), 1))
    return vars(train_toy.parse_args(flags))


@pytest.mark.parametrize("name, command", [(n, c) for _, n, c in COMMANDS])
def test_each_published_command_has_its_script(name, command):
    program = "train.py" if "train.py" in command else "train_toy.py"
    ours = script_command(name, program)
    for chosen, expanded in expansions(command):
        # the scripts' variables stand for the README's placeholders: $PHI / $PHI2 for
        # {kl,chi,softplus}, $DATASET for {25gaussian,twocircles}
        script = ours
        for placeholder, value in chosen.items():
            if placeholder == "exp_name":
                continue
            names = ("$DATASET",) if "25gaussian" in placeholder else ("$PHI2", "$PHI")
            for var in names:
                script = script.replace(var, value)
        readme_args = resolved(program, flags_of(expanded, program))
        script_args = resolved(program, flags_of(script, program))
        if program == "train.py":   # experiment names are the user's choice
            readme_args.pop("exp"), script_args.pop("exp")
        assert script_args == readme_args, (name, chosen)
