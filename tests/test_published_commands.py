"""Every training command of the two papers' READMEs runs here as written.

The commands are quoted in tests/data/published_commands.txt (with their sources); each
one is checked twice: it parses, resolves and builds its networks (--dry_run), and the
script of the same name in scripts/ runs exactly the same configuration. Beyond the commands,
every flag of the public train.py scripts means here what it meant there, or stops with one
line and is listed in docs/reference.md.
"""
import copy
import itertools
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch

import train
import train_toy
from tiny import DATA, ROOT, TINY_TOY, run
from uot.errors import UsageError
from uot.losses import SemiDualLoss
from uot.steps import potential_step

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


# --- every default of a mode is its public script's ------------------------------------

with open(os.path.join(DATA, "public_defaults.json"), encoding="utf-8") as f:
    PUBLIC_DEFAULTS = json.load(f)
# public flags that are not settings of the algorithm, or that this project spells otherwise
NOT_COMPARED = {
    "exp", "resume", "dataset",                     # names and paths; the run's own choice
    "print_every",                                  # --log_every (--print_every is its alias), the same 100
    "fid", "fid_every",                             # FID during training is off here unless asked
    "cost",                                         # only w2 is implemented, in the public code too
    "init_noise", "uniform_quantization",           # declared but never read by train_JSD.py
    "lmbda",                                        # the R1 weight: compared as r1_gamma
    "loss_scheduler",                               # None there, "none" here
}


@pytest.mark.parametrize("script, flags", [
    ("uotm_train.py", []),
    ("sjko_train.py", ["--init_h", "1", "--phi2", "kl"]),      # an S-JKO flag at its default selects the mode
    ("sjko_train_JSD.py", ["--init_h", "0.1"]),                # no --phi2: S-JKO-JSD
])
def test_every_default_of_a_mode_is_its_public_scripts(script, flags):
    ours = vars(train.resolve_args(train.build_parser().parse_args(flags), 1))
    public = {k: v for k, v in PUBLIC_DEFAULTS[script].items() if not k.endswith("__action")}
    compared = [k for k in public if k not in NOT_COMPARED]
    differ = {k: (public[k], ours[k]) for k in compared if ours[k] != public[k]}
    assert not differ, f"public vs ours: {differ}"
    if "lmbda" in public:   # the S-JKO scripts' R1 weight
        assert public["reg_name"] == ours["reg_name"] == "r1" and ours["r1_gamma"] == public["lmbda"]
    assert ours["loss_scheduler"] == "none" and public.get("loss_scheduler") is None
    assert len(compared) > 40   # the comparison covers the networks and the training settings


def test_the_sjko_readmes_cifar10_command_trains_the_map_at_2e_4():
    [command] = [c for _, name, c in COMMANDS if name == "sjko_cifar10"]
    args = resolved("train.py", flags_of(expansions(command)[0][1], "train.py"))
    assert args["lr_g"] == 2e-4 and args["lr_d"] == 1e-4 and args["use_ema"] and args["eta_min"] == 5e-5
    assert args["phi1"] == "linear" and args["potential_pairing"] == "per_sample"


@pytest.mark.parametrize("flags, phi", [
    ("--phi1 softplus --phi2 softplus", ("softplus", "softplus")),                          # UOTM: UOTM's
    ("--num_phase 2 --phi2 softplus", ("linear", "softplus_sjko")),                         # S-JKO: S-JKO's
    ("--num_phase 2 --phi1 softplus --phi2 softplus", ("softplus_sjko", "softplus_sjko")),
    ("--num_phase 2 --phi2 softplus_sjko", ("linear", "softplus_sjko")),
])
def test_softplus_means_the_softplus_of_the_modes_public_code(flags, phi):
    args = train.resolve_args(train.build_parser().parse_args(shlex.split(flags)), 1)
    assert (args.phi1, args.phi2) == phi


@pytest.mark.parametrize("flags, r1", [
    ("", 0.2), ("--r1_gamma 5", 5.0),                           # UOTM's name
    ("--num_phase 2 --lmbda 20", 20.0),                          # S-JKO's name for the same weight
    ("--num_phase 2 --lmbda 20 --r1_gamma 20", 20.0),
])
def test_r1_weight_under_both_names(flags, r1):
    args = train.resolve_args(train.build_parser().parse_args(shlex.split(flags)), 1)
    assert args.r1_gamma == r1


def test_two_different_r1_weights_are_refused():
    with pytest.raises(UsageError, match="--r1_gamma 5.0 and --lmbda 20.0"):
        train.resolve_args(train.build_parser().parse_args(["--lmbda", "20", "--r1_gamma", "5"]), 1)


# --- every flag of the public train.py: its public meaning here, or a documented refusal ----------

MODE_FLAGS = {"uotm_train.py": [], "sjko_train.py": ["--num_phase", "2", "--phi2", "kl"],
              "sjko_train_JSD.py": ["--num_phase", "2"]}
SAMPLE_VALUE = {"loss_scheduler": "cosine"}   # its public default, None, cannot be written on a command line
OUR_NAME = {"print_every": "log_every", "lmbda": "r1_gamma"}   # the R1 weight, with --reg_name r1
PUBLIC_FLAGS = [(script, key, PUBLIC_DEFAULTS[script].get(f"{key}__action"), value)
                for script in MODE_FLAGS for key, value in PUBLIC_DEFAULTS[script].items()
                if not key.endswith("__action")]


def documented_public_flags():
    """{flag: (public meaning, here)} from the table of docs/reference.md, section 9."""
    with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as f:
        section = f.read().split("## 9. ", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(--\w+)` \| ([^|]*[^| ][^|]*) \| ([^|]*[^| ][^|]*) \|$", section, re.M)
    return {flag: (there, here) for flag, there, here in rows}


DOCUMENTED = documented_public_flags()


@pytest.mark.parametrize("script, key, action, value", PUBLIC_FLAGS,
                         ids=[f"{script[:-3]}--{key}" for script, key, _, _ in PUBLIC_FLAGS])
def test_every_public_flag_means_what_it_meant_there_or_stops_as_documented(script, key, action, value):
    """Written as in the public script (a switch alone, else its public default), each flag
    resolves here to the value it has there, or stops with one line that names it; a flag that
    stops is in docs/reference.md's table of differing flags."""
    if action:
        flags, expected = [f"--{key}"], action == "store_true"
    else:
        value = SAMPLE_VALUE.get(key, value)
        flags, expected = [f"--{key}", *map(str, value if isinstance(value, list) else [value])], value
    try:
        args = vars(train.resolve_args(train.build_parser().parse_args(MODE_FLAGS[script] + flags), 1))
    except UsageError as err:
        message = str(err)
        assert f"--{key}" in message and "\n" not in message
        assert f"--{key}" in DOCUMENTED, f"--{key} stops here ({message}) but docs/reference.md does not list it"
        return
    ours = args[OUR_NAME.get(key, key)]
    assert (bool(ours) if action else ours) == expected


def test_the_table_of_differing_flags_lists_only_public_flags():
    public = {f"--{key}" for _, key, _, _ in PUBLIC_FLAGS}
    assert DOCUMENTED and set(DOCUMENTED) <= public, set(DOCUMENTED) - public


# the public store_false switches of a network feature; UOTM's --conditional is read by nothing
STORE_FALSE = sorted({key for _, key, action, _ in PUBLIC_FLAGS if action == "store_false"}
                     - {"use_ema", "fid", "conditional"})


@pytest.mark.parametrize("key", STORE_FALSE)
def test_a_public_store_false_switch_stops_with_its_public_meaning(key):
    """The public --KEY turns an on-by-default switch off; here it stops and says so, and
    --no-KEY is the way to turn it off."""
    parser = train.build_parser()
    with pytest.raises(UsageError, match=rf"^--{key}: in the public .* turns .* off \(store_false\).*--no-{key}"):
        parser.parse_args([f"--{key}"])
    assert getattr(parser.parse_args([]), key) is True and getattr(parser.parse_args([f"--no-{key}"]), key) is False
    assert STORE_FALSE == ["centered", "fir", "resamp_with_conv", "skip_rescale"]


def test_uotms_conditional_switch_did_nothing_there_and_stops_here():
    parser = train.build_parser()
    with pytest.raises(UsageError, match=r"^--conditional: .* never reads it: passing it changes nothing there; "
                                         r"drop it"):
        parser.parse_args(["--conditional"])
    assert parser.parse_args([]).conditional is True and parser.parse_args(["--no-conditional"]).conditional is False


@pytest.mark.parametrize("flags, use_ema", [
    ("--num_phase 2 --use_ema", True),                      # the S-JKO code's store_true: on
    ("--ema", True), ("--num_phase 2 --ema", True),          # this project's spelling, either mode
    ("--no_ema", False), ("--num_phase 2 --use_ema --no_ema", False),
])
def test_use_ema_keeps_the_s_jko_meaning_and_ema_works_in_both_modes(flags, use_ema):
    args = train.resolve_args(train.build_parser().parse_args(shlex.split(flags)), 1)
    assert args.use_ema is use_ema


def test_use_ema_in_uotm_mode_stops_with_the_uotm_codes_meaning():
    """The public UOTM train.py declares --use_ema store_false: there it turns the EMA off."""
    with pytest.raises(UsageError, match=r"^--use_ema in UOTM mode: .* store_false, so there it turns the EMA "
                                         r"off; .*--no_ema"):
        train.resolve_args(train.build_parser().parse_args(["--use_ema", "--phi1", "kl"]), 1)


@pytest.mark.parametrize("flag", ["--cost w1", "--init_noise 0.05", "--uniform_quantization", "--fid"])
def test_public_flags_without_a_counterpart_stop_and_say_why(flag):
    with pytest.raises(UsageError, match=rf"^{flag.split()[0]}: .*(never reads it|store_false).*drop it$"):
        train.build_parser().parse_args(shlex.split(flag))


def test_clip_bounds_the_norm_of_the_potentials_step_penalty_included():
    """--clip c: the potential's whole gradient (loss and R1) is scaled to norm c before the
    step, as the S-JKO code calls clip_grad_norm_ between backward and step; 0 leaves it."""
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Flatten(0))
    real, x = torch.randn(8, 2) * 3, torch.randn(8, 2)
    loss = SemiDualLoss("linear", "kl")

    def step(clip):
        model = copy.deepcopy(D)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        potential_step(lambda x, z: x, model, torch.optim.SGD(model.parameters(), lr=1.0), loss, real, x, None,
                       None, 1.0, r1_weight=0.1, clip=clip)
        return before - torch.cat([p.detach().flatten() for p in model.parameters()])   # lr 1: the gradient

    gradient = step(0.0)
    assert gradient.norm() > 1.0
    torch.testing.assert_close(step(1.0), gradient / gradient.norm())
    torch.testing.assert_close(step(10 * gradient.norm().item()), gradient)   # below the bound: unchanged


def test_clip_reaches_the_potential_step_of_a_run(tmp_path, monkeypatch):
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["clip"])
        return potential_step(*args, **kwargs)

    monkeypatch.setattr(train, "potential_step", recording)
    assert run(TINY_TOY + " --num_phase 1 --init_num_iterations 2 --phi2 kl --clip 0.5", tmp_path) == 0
    assert seen == [0.5, 0.5]
    with pytest.raises(UsageError, match="--clip must be >= 0"):
        train.resolve_args(train.build_parser().parse_args(["--clip", "-1"]), 1)


class RunsCode:
    """Unpickling this runs os.system(command): a statistics file that would run code."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_fid_ref_stats_takes_the_public_stat_npy_and_refuses_one_that_runs_code(tmp_path):
    """--fid_ref_stats is read before training: the public repositories' pickled {'mu', 'sigma'}
    dict is accepted; a pickle that would run code stops the run, and runs nothing."""
    public = tmp_path / "cifar10_train_stat.npy"
    np.save(public, {"mu": np.zeros(2048), "sigma": np.eye(2048)}, allow_pickle=True)
    assert train.resolve_args(train.build_parser().parse_args(["--fid_ref_stats", str(public)]), 1)
    marker, hostile = tmp_path / "marker", tmp_path / "hostile_stat.npy"
    np.save(hostile, np.array(RunsCode(f"touch {marker}"), dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match=f"^{re.escape(str(hostile))} .*refused"):
        train.resolve_args(train.build_parser().parse_args(["--fid_ref_stats", str(hostile)]), 1)
    assert not marker.exists()
