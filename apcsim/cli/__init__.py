"""The command line: `python -m apcsim` (`main`), `--help`/`list` (`listing`), one-line errors
and exit status 2 (`oneline`), unknown config keys (`config_keys`), and composing a typed config
outside the CLI as the CLI would (`compose`). Nothing in the pipeline imports this package."""
