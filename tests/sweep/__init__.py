"""apcsim/sweep: presets, launchers, sweep collection and the sweep report."""
