"""apcsim/cli: the command line, its one-line errors, listing, and runs that must not lose results."""
