"""apcsim/calibration: profiles, their conversion, the calibrated cost model and its CLI."""
