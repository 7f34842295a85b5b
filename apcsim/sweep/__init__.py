"""Sweeps (Hydra multiruns): one job of a sweep (`job`), the table of a finished sweep
(`collect`), its HTML figures (`report`), the callback that writes both when a multirun ends
(`callback`), and `python -m apcsim.sweep` (`__main__`), which rebuilds the table of a sweep
directory. The sweep's config nodes (`sweep`, `tune`) are in `apcsim.config`."""
