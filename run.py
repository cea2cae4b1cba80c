"""attnbench from a clone: ``python run.py method=<name> task=<name> [key=value ...]`` (``-m`` sweeps).

The same command line as the installed ``attnbench`` console script (``attnbench/cli.py``).
"""
from attnbench.cli import run_job

if __name__ == "__main__":
    run_job()
