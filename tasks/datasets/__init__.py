"""Data and scoring helpers of the tasks (no task is registered here).

- ``local_text``: one offline English corpus (standard-library docstrings) with a train/held-out split.
- ``needle``: needle-in-a-haystack prompts over that corpus (``task=kv_cache dataset=needle``).
- ``longbench``: the LongBench(-E) loader and LongBench's own metrics (``dataset=longbench``).
"""
