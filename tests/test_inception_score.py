"""Inception Score as the anchor BigGAN tables computed it (BigGAN-PyTorch's inception_utils on
torchvision's ImageNet InceptionV3): the split formula against an independent NumPy computation,
the torchvision-network path on a random ``inception_v3`` end to end, and the weights errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnbench import methods
from attnbench import tasks
from attnbench.core.measure import Meter
from attnbench.tasks.metrics import fid as fidlib

WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"


def numpy_inception_score(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """The formula on probability rows, NumPy only: chunks of N // splits rows (rest unused),
    exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y))) per chunk, mean and population sd."""
    probs = np.asarray(probs, dtype=np.float64)
    size = probs.shape[0] // splits
    scores = []
    for i in range(splits):
        part = probs[i * size: (i + 1) * size]
        py = np.mean(part, axis=0, keepdims=True)
        kl = np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------
def test_formula_matches_numpy_on_random_probability_vectors():
    rng = np.random.default_rng(0)
    for n, c, alpha in ((1000, 1000, 0.05), (300, 20, 0.5), (60, 7, 2.0)):
        probs = rng.dirichlet(np.full(c, alpha), size=n)
        probs = np.clip(probs, 1e-300, None)
        probs /= probs.sum(axis=1, keepdims=True)
        # softmax(log p) = p: the function sees logits, the reference the probabilities themselves.
        got = fidlib.inception_score(np.log(probs), splits=10)
        want = numpy_inception_score(probs, 10)
        assert got[0] == pytest.approx(want[0], rel=1e-9) and got[1] == pytest.approx(want[1], rel=1e-7, abs=1e-12)
        assert got[0] > 1.0 and got[1] > 0.0


def test_formula_matches_numpy_on_logits_and_uneven_sizes():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(107, 12)) * 3).astype(np.float32)  # 10 chunks of 10, 7 rows unused
    got = fidlib.inception_score(logits, splits=10)
    want = numpy_inception_score(numpy_softmax(logits), 10)
    assert got == pytest.approx(want, rel=1e-9)
    # The last N mod splits rows take no part (BigGAN-PyTorch's chunks of N // splits).
    assert fidlib.inception_score(logits[:100], splits=10) == got
    changed = logits.copy()
    changed[100:] = rng.normal(size=(7, 12)) * 10
    assert fidlib.inception_score(changed, splits=10) == got
    # ... while any used row matters.
    changed[99, 0] += 5.0  # (a constant on the whole row would leave its softmax unchanged)
    assert fidlib.inception_score(changed, splits=10)[0] != pytest.approx(got[0], rel=1e-9)
    # Other split counts.
    for splits in (1, 3, 7):
        assert fidlib.inception_score(logits, splits) == pytest.approx(numpy_inception_score(numpy_softmax(logits), splits),
                                                                        rel=1e-9)


def test_formula_limits():
    # Uniform predictions: IS 1. Confident and balanced over C classes within each chunk: IS C, sd 0.
    assert fidlib.inception_score(np.zeros((30, 8)), splits=10) == pytest.approx((1.0, 0.0))
    confident = np.eye(5)[np.arange(50) % 5] * 60.0
    mean, sd = fidlib.inception_score(confident, splits=10)
    assert mean == pytest.approx(5.0, rel=1e-9) and sd == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="task.is_splits"):
        fidlib.inception_score(np.zeros((9, 5)), splits=10)


# --------------------------------------------------------------------------------------------
# The torchvision network (a random inception_v3 in torchvision's weight-file format)
# --------------------------------------------------------------------------------------------
def random_inception_v3(seed: int = 0) -> torch.nn.Module:
    """torchvision's inception_v3 (aux branch included, as in the ImageNet file), random weights
    scaled so activations survive the depth and logits differ between images."""
    import torchvision

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(math.sqrt(6.0))  # He-like gain instead of the default's ~1/3 per layer
        net.fc.weight.mul_(10.0)
    return net.eval()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tv_inception") / WEIGHTS_FILE
    torch.save(random_inception_v3().state_dict(), path)
    return str(path)


def reference_logits(images: torch.Tensor, weights: str) -> torch.Tensor:
    """Independent of TorchvisionInception: BigGAN-PyTorch's preprocessing written out, then
    torchvision's own Inception3.forward (eval, transform_input=False) on a fresh model."""
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    x = images * 2 - 1  # the anchors' [-1, 1] images (Normalize(0.5, 0.5))
    x = (x + 1.0) / 2.0  # WrapInception: back to [0, 1], ImageNet mean/std, 299 bilinear align_corners=True
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    with torch.no_grad():
        return net(x)


def test_torchvision_network_matches_reference_forward(weights_file):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    images[0, :, :16] = 0.0
    net = fidlib.build_is_net("torchvision", weights_file)
    assert isinstance(net, fidlib.TorchvisionInception) and net.net.AuxLogits is None
    pool, logits = fidlib.features(net, images)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1000)
    ref = reference_logits(images, weights_file).numpy()
    scale = np.abs(ref).max()
    assert np.abs(logits - ref).max() < 1e-4 * scale
    assert np.ptp(ref, axis=0).max() > 0.1 * scale  # logits differ between images: the check can fail
    # The preprocessing matters at that tolerance: without the ImageNet normalisation it differs.
    net.std.fill_(1.0)
    net.mean.fill_(0.0)
    other = fidlib.features(net, images)[1]
    assert np.abs(other - ref).max() > 1e-2 * scale


def test_task_with_torchvision_is_network_end_to_end(weights_file):
    cfg = dict(name="biggan", model="tiny", images_per_class=1, num_classes=5, batch_size=5, latency_batch=2,
               compare_exact=False, is_network="torchvision", is_weights=weights_file, is_splits=2)
    task = tasks.build(cfg, "cpu", 1)
    assert isinstance(task.is_net, fidlib.TorchvisionInception) and task.feature_kind == "tiny"
    seen: list[torch.Tensor] = []  # what the IS network is given (the generated images at fid_resize)
    task.is_net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    exact = methods.build("exact")
    exact.reseed(1)
    row = next(task.run(exact, Meter.quick()))
    assert row["is_network"] == "torchvision" and row["feature_net"] == "tiny"
    assert row["num_images"] == 5 and row["is_images"] == 4  # chunks of 2, one image unused
    assert math.isfinite(row["is_mean"]) and row["is_mean"] > 1.0 and math.isfinite(row["fid"])
    images = torch.cat(seen)
    assert images.shape == (5, 3, 128, 128) and 0.0 <= images.min() and images.max() <= 1.0
    # The row's IS equals the NumPy formula on the reference forward of the same images.
    ref = reference_logits(images, weights_file).numpy()
    want = numpy_inception_score(numpy_softmax(ref), 2)
    assert row["is_mean"] == pytest.approx(want[0], rel=1e-4) and row["is_std"] == pytest.approx(want[1], rel=1e-3, abs=1e-6)


def test_default_is_network_is_tiny_for_the_tiny_model():
    task = tasks.build(dict(name="biggan", model="tiny", images_per_class=1, num_classes=2), "cpu", 1)
    assert task.is_kind == "tiny" and task.is_net is None  # the tiny feature net's own logits
    with pytest.raises(ValueError, match="task.is_network"):
        tasks.build(dict(name="biggan", model="tiny", is_network="vgg"), "cpu", 1)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_missing_weights_error_names_key_and_file(tmp_path, monkeypatch):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="task.is_weights") as e:
        fidlib.TorchvisionInception(missing)
    assert WEIGHTS_FILE in str(e.value) and "download.pytorch.org" in str(e.value)
    with pytest.raises(FileNotFoundError, match="task.is_weights"):
        tasks.build(dict(name="biggan", model="tiny", is_network="torchvision", is_weights=missing), "cpu", 1)

    # No local path, offline, nothing in the torch hub cache.
    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="task.is_weights") as e:
        fidlib.build_is_net("torchvision", None)
    assert WEIGHTS_FILE in str(e.value) and fidlib.torchvision_inception_url() in str(e.value)

    # The pytorch_fid variant still takes pytorch-fid's file (task.inception_weights).
    with pytest.raises(FileNotFoundError, match="task.inception_weights"):
        fidlib.build_is_net("pytorch_fid", missing)


def test_wrong_weight_file_is_refused(tmp_path):
    wrong = tmp_path / "pt_inception.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, wrong)  # pytorch-fid's 1008 classes
    with pytest.raises(ValueError, match="not torchvision's ImageNet InceptionV3"):
        fidlib.TorchvisionInception(str(wrong))
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, partial)
    with pytest.raises(ValueError, match="missing"):
        fidlib.TorchvisionInception(str(partial))
