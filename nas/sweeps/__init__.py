"""`hwnas sweep`: a W&B sweep file run without a W&B server — the file and its runs' commands
(`nas.sweeps.file`), the runs, their results and the sweep's Pareto plot (`nas.sweeps.run`)."""
