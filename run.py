"""attnbench entry point: ``python run.py method=<name> task=<name> [key=value ...]`` (``-m`` sweeps)."""
import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the suite prints its own progress lines
os.environ.setdefault("TQDM_DISABLE", "1")

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from runners.run import run
    from runners.sweep import NEXT_STEPS, note_job

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    rows = run(cfg, raise_errors=False, sweep_dir=None if single else hc.sweep.dir)
    note_job(hc.runtime.output_dir, rows)
    if single:
        if not cfg.get("quiet", False):
            print(NEXT_STEPS)
        # a single run exits non-zero on error; in a sweep the error row is kept and the sweep goes on
        if any(r.get("status") == "error" for r in rows):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
