"""Models the tasks share: T2T-ViT (which no dependency provides) and the causal language models
of the ``kv_cache`` and ``lm`` tasks (``causal_lm``); not a task (tasks/__init__ skips it)."""
