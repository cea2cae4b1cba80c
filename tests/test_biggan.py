"""The biggan task and its FID/IS helpers: exact swap, end-to-end tiny runs, metrics, stats files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnbench import methods
from attnbench import tasks
from attnbench.methods.base import AttentionMethod
from attnbench.methods.exact import dense_attention
from attnbench.core.measure import Meter
from attnbench.tasks.metrics import fid as fidlib
from attnbench.tasks.adapters.biggan import SwappedSelfAttn, swap_attention
from attnbench.tasks.biggan import load_biggan, tiny_biggan


class Recorder(AttentionMethod):
    """Dense attention recording the shapes and scale of every call."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def _attend(self, q, k, v, *, causal, scale):
        self.calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), scale, causal))
        return dense_attention(q, k, v, causal=causal, scale=scale)


class MeanOnly(AttentionMethod):
    """Uniform attention (mean of values): a deliberately wrong method."""

    name = "meanonly"

    def _attend(self, q, k, v, *, causal, scale):
        return v.mean(dim=2, keepdim=True).expand(*q.shape[:3], v.shape[-1]).contiguous()


def inputs(b: int = 3, seed: int = 1):
    from pytorch_pretrained_biggan.utils import truncated_noise_sample

    z = torch.from_numpy(truncated_noise_sample(b, 16, 0.4, seed=seed))
    y = torch.eye(10)[torch.arange(b) % 10]
    return z, y


def task_cfg(**kw):
    cfg = dict(name="biggan", model="tiny", images_per_class=2, num_classes=5, batch_size=4, latency_batch=2)
    cfg.update(kw)
    return cfg


def meter() -> Meter:
    return Meter.quick()


# --------------------------------------------------------------------------------------------
# The swapped layer
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def test_exact_swap_reproduces_original_generator():
    z, y = inputs()
    orig = tiny_biggan(seed=3)
    ref = orig(z, y, 0.4)
    keys = list(orig.state_dict())
    swapped = tiny_biggan(seed=3)
    w = swap_attention(swapped)  # default: exact
    assert isinstance(w, SwappedSelfAttn)
    assert list(swapped.state_dict()) == keys  # same names: weights load identically
    out = swapped(z, y, 0.4)
    assert (out - ref).abs().max() < 1e-5
    # A wrong attention changes the images (so the check above can fail).
    w.call.method = MeanOnly()
    assert (swapped(z, y, 0.4) - ref).abs().max() > 5e-3


@torch.no_grad()
def test_swap_calls_method_with_one_head_and_scale_one():
    rec = Recorder()
    model = tiny_biggan()
    swap_attention(model, rec)
    z, y = inputs(2)
    model(z, y, 0.4)
    # Attention at 32x32 with 32 channels: q 1024 x 4, k 256 x 4 (max-pooled), v 256 x 16.
    assert rec.calls == [((2, 1, 1024, 4), (2, 1, 256, 4), (2, 1, 256, 16), 1.0, False)]


def test_tiny_model_is_seeded():
    a, b, c = tiny_biggan(0), tiny_biggan(0), tiny_biggan(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def test_fid_self_is_zero_and_grows_with_noise():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(40, 3, 32, 32, generator=g)
    net = fidlib.build_feature_net("tiny")
    base = fidlib.features(net, imgs)[0]
    assert fidlib.fid_between(base, base) < 1e-8
    fids = []
    for sigma in (0.05, 0.2, 0.5):
        noisy = (imgs + sigma * torch.randn(imgs.shape, generator=g)).clamp(0, 1)
        fids.append(fidlib.fid_between(base, fidlib.features(net, noisy)[0]))
    assert 0 < fids[0] < fids[1] < fids[2]


def test_frechet_distance_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8)) + 0.5
    mu1, s1 = fidlib.statistics(a)
    mu2, s2 = fidlib.statistics(b)
    assert fidlib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)
    with pytest.raises(ValueError, match="feature"):
        fidlib.frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def test_inception_score_limits():
    assert fidlib.inception_score(np.zeros((20, 5)), splits=2) == pytest.approx((1.0, 0.0))
    confident = np.eye(5)[np.arange(20) % 5] * 50.0
    mean, sd = fidlib.inception_score(confident, splits=2)
    assert mean == pytest.approx(5.0, rel=1e-6) and sd == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="is_splits"):
        fidlib.inception_score(np.zeros((3, 5)), splits=10)


def test_stats_npz_round_trip_via_command(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "n0001"
    folder.mkdir(parents=True)
    for i in range(12):  # different sizes and aspect ratios: centre crop + resize handles them
        arr = rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    out = tmp_path / "stats.npz"
    assert fidlib.main(["stats", str(tmp_path / "imgs"), str(out), "--feature-net", "tiny", "--resize", "32",
                        "--device", "cpu"]) == 0
    mu, sigma, meta = fidlib.load_stats(str(out))
    feats = fidlib.folder_features(str(tmp_path / "imgs"), fidlib.build_feature_net("tiny"), 32)
    mu2, sigma2 = fidlib.statistics(feats)
    np.testing.assert_allclose(mu, mu2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, sigma2, rtol=1e-6, atol=1e-9)
    assert meta["resize"] == 32 and meta["feature_net"] == "tiny" and meta["count"] == 12
    assert fidlib.frechet_distance(mu, sigma, mu2, sigma2) < 1e-8
    # The task uses it, and refuses statistics made with other preprocessing.
    task = tasks.build(task_cfg(fid_stats=str(out), fid_resize=32), "cpu", 1)
    assert task.ref is not None
    with pytest.raises(ValueError, match="resize"):
        tasks.build(task_cfg(fid_stats=str(out), fid_resize=64), "cpu", 1)


# --------------------------------------------------------------------------------------------
# The task end to end
# --------------------------------------------------------------------------------------------
def test_tiny_run_end_to_end(tmp_path):
    task = tasks.build(task_cfg(save_images=True, image_dir=str(tmp_path)), "cpu", 1)
    m = methods.build("performer", nb_features=16)
    m.reseed(1)
    rows = list(task.run(m, meter()))
    assert len(rows) == 1
    row = rows[0]
    for key in ("fid", "is_mean", "is_std", "fid_vs_exact", "exact_fid", "exact_is_mean", "latency_ms",
                "exact_latency_ms", "speedup", "gen_latency_ms", "gen_time_s"):
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    assert row["num_images"] == 10 and row["n"] == 1024 and row["n_keys"] == 256 and row["heads"] == 1
    assert row["batch"] == 2 and row["scale"] == 1.0
    assert row["fid_vs_exact"] > 0 and row["is_mean"] >= 1.0
    assert row["nb_features"] == 16
    assert "smoke" in row["note"]
    assert row["is_network"] == "tiny" and row["is_images"] == 10  # tiny model: the tiny feature net's logits
    assert len(row["images_saved"].split(";")) == 2 and all((tmp_path / p).exists() for p in row["images_saved"].split(";"))

    # exact: fid_vs_exact is 0, the row's fid equals the approximate run's exact_fid (same images).
    ex = methods.build("exact")
    ex.reseed(1)
    erow = next(task.run(ex, meter()))
    assert erow["fid_vs_exact"] == 0.0
    assert erow["fid"] == pytest.approx(row["exact_fid"], rel=1e-6, abs=1e-9)
    assert erow["is_mean"] == pytest.approx(row["exact_is_mean"], rel=1e-6)


def test_runs_repeat_with_one_seed_and_exact_cache(tmp_path):
    cfg = task_cfg(exact_cache_dir=str(tmp_path), num_classes=2, images_per_class=5)
    rows = []
    for _ in range(2):
        task = tasks.build(cfg, "cpu", 2)
        m = methods.build("performer", nb_features=8)
        m.reseed(2)
        rows.append(next(task.run(m, meter())))
    assert len(list(tmp_path.glob("biggan_exact_*.npz"))) == 1  # second run read the cache
    for key in ("fid", "is_mean", "fid_vs_exact", "exact_fid"):
        assert rows[0][key] == rows[1][key], key
    # An exact run writes the same cache entry (same latents and settings).
    fresh = tmp_path / "fresh"
    task = tasks.build({**cfg, "exact_cache_dir": str(fresh)}, "cpu", 2)
    erow = next(task.run(methods.build("exact"), meter()))
    assert erow["fid"] == pytest.approx(rows[0]["exact_fid"], rel=1e-9)
    assert [p.name for p in fresh.glob("*.npz")] == [p.name for p in tmp_path.glob("biggan_exact_*.npz")]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_missing_weights_error_names_task_weights(tmp_path, monkeypatch):
    stats = tmp_path / "s.npz"
    fidlib.save_stats(str(stats), np.zeros(64), np.eye(64), feature_net="tiny", resize=128)
    with pytest.raises(FileNotFoundError, match="task.weights"):
        tasks.build(task_cfg(model="biggan-deep-512", weights=str(tmp_path / "nope"), fid_stats=str(stats),
                             feature_net="tiny"), "cpu", 1)

    import pytorch_pretrained_biggan.file_utils as fu
    import attnbench.tasks.biggan as tb

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(fu, "cached_path", offline)
    monkeypatch.setattr(tb, "_cached_download", lambda url: None)
    with pytest.raises(RuntimeError, match="task.weights"):
        load_biggan("biggan-deep-512", None)


def test_real_model_needs_fid_stats_and_bad_knobs():
    with pytest.raises(ValueError, match="task.fid_stats"):
        tasks.build(task_cfg(model="biggan-deep-512"), "cpu", 1)
    with pytest.raises(ValueError, match="task.truncation"):
        tasks.build(task_cfg(truncation=0.0), "cpu", 1)
    with pytest.raises(ValueError, match="task.feature_net"):
        tasks.build(task_cfg(feature_net="vgg"), "cpu", 1)
    with pytest.raises(ValueError, match="task.num_classes"):
        tasks.build(task_cfg(num_classes=11), "cpu", 1)
