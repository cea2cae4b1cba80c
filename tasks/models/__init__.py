"""Architectures that no dependency provides (T2T-ViT); not a task (tasks/__init__ skips it)."""
