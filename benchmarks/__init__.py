"""Benchmarks of the search: one module per figure, each with ``run(quick, out_dir) -> dict``.

`benchmarks.run_all` runs them in order and prints a table; BENCHMARKS.md holds the figures.
"""

FIGURES = (
    "supernet_overhead",
    "one_vs_many",
    "baselines",
    "early_exit",
    "budget_adherence",
    "cost_fidelity",
)
