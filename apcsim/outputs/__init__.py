"""What a run leaves behind: the metrics it measures (`metrics`), the per-request log and
requests.csv (`requestlog`), the HTML report (`report`), status.json (`status`), the files every
run writes (`files`), the run directory's lock and atomic writes (`rundir`), and the progress bar
(`progress`). The simulator and the engine share all of it."""
