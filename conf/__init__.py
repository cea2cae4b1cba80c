"""attnbench's Hydra configs (``attnbench.conf`` once installed): Hydra reads them as
``pkg://attnbench.conf``; plugins add theirs through Hydra's search path."""
