"""Top-k attention, an example attnbench plugin (see attention.py)."""
