"""Benchmark (not a test): LATTE on the CPU against exact causal SDPA, on captured SmolLM2 q, k, v.

``attnbench bench_latte [--n 2048 8192] [--layers 10] [--thresholds-path FILE]
[--backends cpu] [--meter default] [--threads N]`` prints, per n, layer and LATTE backend: the
kept fraction, both medians with p10–p90, the paired speed-up (exact / LATTE, ``Meter.compare``:
samples interleaved, 95 % bootstrap interval), the peak memory of both (``Meter``'s CPU
profiler pass), LATTE's relative error against exact, and the load average before and after.
q, k, v come from ``task.source=smollm2`` (``tasks.datasets.sources.make_qkv``, cached under
``results/cache``; the first capture loads the model, about a minute). ``--backends cpu torch``
adds the dense PyTorch path (the path before the CPU path existed) for a before/after pair.
Run it on an idle machine: check ``uptime`` first; timings on a loaded machine are not evidence.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import torch

from attnbench import methods
from attnbench.core.measure import meter_from_config
from attnbench.tasks.datasets.sources import make_qkv

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    """``uptime``'s line where the command exists, else the load average."""
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"load average {os.getloadavg()}"


def meter_config(name: str) -> dict:
    """The knobs of ``conf/meter/<name>.yaml`` (its ``defaults`` list resolved)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "meter" / f"{name}.yaml"))
    out: dict = {}
    for parent in cfg.pop("defaults", []):
        if parent != "_self_":
            out.update(meter_config(parent))
    out.update(cfg)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--layers", type=int, nargs="+", default=[10], help="SmolLM2 layers whose q, k, v are captured")
    ap.add_argument("--threshold", type=float, default=5.0, help="θ of every head (ignored with --thresholds-path)")
    ap.add_argument("--thresholds-path", default=None, help="trained θ (.pt from runners.train_thresholds lm)")
    ap.add_argument("--score", default="int8", choices=["int8", "float"])
    ap.add_argument("--backends", nargs="+", default=["cpu"], choices=["cpu", "torch"])
    ap.add_argument("--meter", default="default", help="a conf/meter/*.yaml name (default, long, quick)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)

    meter_cfg = meter_config(args.meter)
    if args.threads is not None:
        meter_cfg["num_threads"] = args.threads
    meter = meter_from_config(meter_cfg, torch.device("cpu"))
    print(f"before: {load()}")
    print(f"torch {torch.__version__}, {meter.num_threads} threads, meter={args.meter}")
    exact = methods.build("exact")
    rows = []
    for n in args.n:
        for layer in args.layers:
            data = make_qkv({"source": "smollm2", "n": n, "layer": layer, "causal": True}, n, 0,
                            torch.device("cpu"), torch.float32)
            q, k, v, scale = data["q"], data["k"], data["v"], data["scale"]
            for backend in args.backends:
                knobs = {"name": "latte", "backend": backend, "score": args.score, "threshold": args.threshold}
                if args.thresholds_path:
                    knobs.update(thresholds_path=args.thresholds_path,
                                 threshold_layer=f"model.layers.{layer}.self_attn")
                latte = methods.build(knobs)

                @torch.no_grad()
                def run_latte():
                    return latte(q, k, v, causal=True, scale=scale)

                @torch.no_grad()
                def run_exact():
                    return exact(q, k, v, causal=True, scale=scale)

                out, ref, comp = meter.compare(run_latte, run_exact, label=f"n{n}_L{layer}_{backend}")
                err = float((out.double() - ref.double()).norm() / ref.double().norm())
                m, e = comp.method, comp.exact
                row = {
                    "n": n, "layer": layer, "backend": backend, "kept": latte.extra_stats()["kept_fraction"],
                    "latte_ms": m.median_ms, "latte_p10": m.quantile_ms(0.1), "latte_p90": m.quantile_ms(0.9),
                    "exact_ms": e.median_ms, "exact_p10": e.quantile_ms(0.1), "exact_p90": e.quantile_ms(0.9),
                    "speedup": comp.speedup, "lo": comp.speedup_lo, "hi": comp.speedup_hi, "samples": len(m.samples_ms),
                    "latte_mb": m.peak_mem_mb, "exact_mb": e.peak_mem_mb, "rel_err": err,
                }
                rows.append(row)
                mb = (f"{row['latte_mb']:.1f} / {row['exact_mb']:.1f} MB" if row["latte_mb"] is not None
                      else "memory off")
                print(f"n={n} layer={layer} {backend}: kept {row['kept']:.3f}  "
                      f"latte {row['latte_ms']:.1f} ms [{row['latte_p10']:.1f}, {row['latte_p90']:.1f}]  "
                      f"exact {row['exact_ms']:.1f} ms [{row['exact_p10']:.1f}, {row['exact_p90']:.1f}]  "
                      f"speed-up {row['speedup']:.2f}x [{row['lo']:.2f}, {row['hi']:.2f}] ({row['samples']} pairs)  "
                      f"peak {mb}  rel err vs exact {err:.4f}", flush=True)
    print(f"after: {load()}")
    print("speed-up = exact / LATTE median latency (paired, 95 % bootstrap interval); > 1: LATTE is faster.")
    return rows


if __name__ == "__main__":
    main()
