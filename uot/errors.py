"""User-facing errors: bad flags, missing files, incompatible checkpoints.

Scripts catch `UsageError` at the top level, print its message as one line on
stderr and exit with code 2, so a user never sees a traceback for a mistake
that is theirs to fix.
"""
import sys

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """A problem with the command line or the input files, with its fix in the message."""


def exit_on_usage_error(main):
    """Run `main()`; turn a UsageError into one stderr line and exit code 2."""
    try:
        return main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT_CODE)
