"""``python -m attnbench ...``: the same command line as the ``attnbench`` console script."""
from attnbench.cli import main

if __name__ == "__main__":
    main()
