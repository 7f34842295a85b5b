"""`python -m apcsim`: `--help`/`list` (apcsim.cli.listing), else a plain command line that ran
before starts without Hydra (apcsim.cli.fast_run), else Hydra (apcsim.cli.main). Hydra and
OmegaConf are imported only on that last path."""

from __future__ import annotations

import os
import sys


def single_threaded_blas() -> None:
    """A simulation is one Python thread; numpy's OpenBLAS would start a thread per core when
    numpy is imported, which only costs CPU time (~0.07 s of a short run on a 2-CPU machine,
    its threads spinning). Set before numpy is imported; a user's own setting is kept."""
    if "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def entry() -> None:
    single_threaded_blas()
    from apcsim.cli.listing import listing, wants_listing

    args = sys.argv[1:]
    if wants_listing(args):  # `--help` / `list`: keys and registered options, not Hydra's dump
        print(listing(), end="")
        return
    from apcsim.cli.fast_run import try_fast_run
    from apcsim.cli.installed import Fingerprint
    from apcsim.cli.oneline import run_with_one_line_errors

    installed = Fingerprint()  # this command's: both paths' cache keys share one walk of the files
    ran = False

    def fast() -> None:
        nonlocal ran
        ran = try_fast_run(args, installed)

    run_with_one_line_errors(fast, "apcsim")  # its errors exit as Hydra's path would
    if not ran:
        from apcsim.cli.main import run_hydra

        run_hydra(installed)
