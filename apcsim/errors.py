"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

import sys
from typing import NoReturn


class ApcsimError(Exception):
    """A problem with the user's input (config, trace, values), not a bug in apcsim."""


class ConfigError(ApcsimError):
    """A config value that is unknown, of the wrong type, or impossible."""


class TraceError(ApcsimError):
    """A missing or malformed trace file; the message names the file and line."""


class JobsFailed(SystemExit):
    """A multirun finished, reports written, with failed jobs: exit status 1, and the output
    passes through as it is (not an input error, which would be folded to one line, status 2)."""

    def __init__(self) -> None:
        super().__init__(1)


def exit_bad_input(prog: str, message: str) -> NoReturn:
    """Report bad input the way every apcsim command does (argparse too): one line
    `PROG: error: MESSAGE` on stderr, then exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)
