"""The runners: one job (``run``), sweeps, reports, claims, checks and benchmarks; each command-line
runner is ``attnbench NAME`` (``attnbench/cli.py`` lists them) or ``python -m attnbench.runners.NAME``."""
if __name__ != "attnbench.runners":  # one name per module: never imported as a bare top-level `runners`
    raise ImportError(f"import attnbench.runners, not {__name__} (in a clone: `pip install -e .`, then "
                      "`attnbench COMMAND` or `python -m attnbench.runners.MODULE`).")
