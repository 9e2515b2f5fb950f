"""Command-line plumbing shared by the scripts: argparse errors as one-line UsageErrors, and
the checks of flag values, each naming the flag."""
import argparse

from uot.errors import UsageError
from uot.phi import select_phi


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, malformed value) are one-line UsageErrors."""

    def error(self, message):
        raise UsageError(f"{message}; see {self.prog} --help")


class Refused(argparse.Action):
    """A flag of the public code whose meaning there this project does not give it: passing
    it stops with `reason` (what it meant there, and what to write instead). Hidden from --help;
    docs/reference.md lists these flags."""

    def __init__(self, option_strings, dest, reason, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{option_string}: {self.reason}")


def check_positive(args, *names):
    for name in names:
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name} must be > 0 (got {getattr(args, name)})")


def check_non_negative(args, *names):
    for name in names:
        if not getattr(args, name) >= 0:
            raise UsageError(f"--{name} must be >= 0 (got {getattr(args, name)})")


def check_phi(args, *names):
    """Each flag names a registered Psi* (uot.phi, utils.register_phi)."""
    for name in names:
        try:
            select_phi(getattr(args, name))
        except UsageError as err:
            raise UsageError(f"--{name}: {err}") from None

