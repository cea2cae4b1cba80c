"""The bottom layer of attnbench: measurement, results schema and the generic registry.

Imports torch, numpy and the standard library only; methods, tasks and runners build on it.
"""

if __name__ != "attnbench.core":  # one name per module: never imported as a bare top-level `core`
    raise ImportError(f"import attnbench.core, not {__name__} (in a clone: `pip install -e .`, then "
                      "`attnbench COMMAND` or `python -m attnbench.core.MODULE`).")
