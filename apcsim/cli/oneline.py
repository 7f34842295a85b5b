"""Run a Hydra entry point so that any bad input ends in one line on stderr and exit status 2.

The entry point reports its own checks as `PROG: error: ...` and exits 2; Hydra's composition
errors (unknown option, wrong type) are multi-line and get folded here. HYDRA_FULL_ERROR=1
passes Hydra's full output through.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Callable

from apcsim.errors import JobsFailed


def one_line(text: str) -> str:
    """Fold Hydra's multi-line error into one line: the message and the options it lists."""
    head: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR", "Traceback")):
            continue
        if line.startswith(("Config search path", "full_key:", "object_type=", "reference_type")):
            break
        line = re.sub(r"^In '[^']*': ", "", line)
        if raw.startswith("\t") and head:
            options.append(line)  # an indented list, e.g. the available options of a group
        else:
            head.append(line)
    msg = "; ".join(head) or text.strip()
    if options:
        msg = msg.rstrip(":") + ": " + ", ".join(options)
    return re.sub(r"[.:]\s*;", ";", msg)


class _Capture(io.StringIO):
    """stderr held back for folding, except `PROG: warning:` lines, which go out as they come (a
    warning about a long run is no use once it has finished)."""

    def __init__(self, real, prefix: str) -> None:
        super().__init__()
        self._real, self._prefix, self._pending = real, prefix, ""

    def write(self, s: str) -> int:
        self._pending += s
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if line.startswith(self._prefix):
                self._real.write(line + "\n")
                self._real.flush()
            else:
                super().write(line + "\n")
        return len(s)

    def getvalue(self) -> str:
        return super().getvalue() + self._pending


def run_with_one_line_errors(main: Callable[[], None], prog: str) -> None:
    real_err = sys.stderr
    buf = _Capture(real_err, f"{prog}: warning:")
    sys.stderr = buf  # Hydra prints its errors to stderr, then exits
    code = 0
    passthrough = False
    try:
        main()
    except JobsFailed:
        code, passthrough = 1, True
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stderr = real_err
    text = buf.getvalue()
    # 128 + signal: an interrupted run, which has said what it kept; not an input error.
    if code == 0 or code > 128 or passthrough or os.environ.get("HYDRA_FULL_ERROR") == "1":
        real_err.write(text)  # success, or the user asked for Hydra's full error
        if code:
            sys.exit(code)
        return
    errors = [line for line in text.splitlines() if line.startswith(f"{prog}: error:")]
    def reword_hydra_error(msg: str) -> str | None:
        from apcsim.cli.config_keys import reword_hydra_error as reword

        try:
            return reword(msg)
        except Exception:
            return None

    if errors:
        argparse_hint = reword_hydra_error(errors[0]) if "unrecognized arguments:" in errors[0] else None
        real_err.write((f"{prog}: error: {argparse_hint}" if argparse_hint else errors[0]) + "\n")
    else:
        real_err.write(f"{prog}: error: {reword_hydra_error(text) or one_line(text)}\n")
    sys.exit(2)
