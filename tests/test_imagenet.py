"""The imagenet task: exact swap, layer selection, checkpoints, end-to-end runs on synthetic images."""
from __future__ import annotations

import pytest
import torch

from attnbench import methods
from attnbench import tasks
from attnbench.methods.base import AttentionMethod
from attnbench.methods.exact import dense_attention
from attnbench.core.measure import Meter
from attnbench.tasks.adapters.t2t_vit import SwappedTokenAttention, SwappedTokenPerformer
from attnbench.tasks.adapters.timm_vit import SwappedTimmAttention
from attnbench.tasks.imagenet import attention_layers, swap_attention
from attnbench.tasks.models.t2t_vit import TokenAttention, create_t2t_vit, extract_state_dict

TINY_T2T = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, token_dim=16, num_classes=10)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


def tiny_t2t(name: str = "t2t_vit_t_14", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_t2t_vit(name, **TINY_T2T).eval()


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT).eval()


def images(b: int = 3, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


class Recorder(AttentionMethod):
    """Dense attention that records the (n, scale) of every call."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self._calls: list[tuple[int, float]] = []

    def _attend(self, q, k, v, *, causal, scale):
        self._calls.append((q.shape[2], scale))
        return dense_attention(q, k, v, causal=causal, scale=scale)


def task_cfg(**kw):
    cfg = dict(name="imagenet", model="t2t_vit_t_14", model_kwargs=TINY_T2T, pretrained=False,
               data="synthetic", limit=5, batch_size=4)
    cfg.update(kw)
    return cfg


# --- exactness of the swap -------------------------------------------------------------------
@pytest.mark.parametrize("build,count", [(tiny_t2t, 4), (tiny_vit, 2)], ids=["t2t_vit_t", "timm_vit"])
def test_exact_swap_reproduces_untouched_logits(build, count):
    model = build().double()
    x = images(dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        swapped = swap_attention(model, None, methods.build("exact"))
        out = model(x)
    assert len(swapped) == count  # T2T: t2t1, t2t2, block0, block1; ViT: block0, block1
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_vit_swap_is_exact_in_float32():
    model = tiny_vit()
    x = images()
    with torch.no_grad():
        ref = model(x)
        swap_attention(model)
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_t2t_scale_quirk_and_state_dict_names_kept():
    model = tiny_t2t()
    keys = set(model.state_dict())
    wrappers = swap_attention(model, ["t2t1", "t2t2"])
    assert set(model.state_dict()) == keys  # same parameter names: checkpoints load the same
    # scale = (input width)^-0.5: 3·7·7 = 147 and token_dim·9, not head_dim^-0.5
    assert wrappers["t2t1"].scale == pytest.approx(147 ** -0.5)
    assert wrappers["t2t2"].scale == pytest.approx((16 * 9) ** -0.5)
    rec = Recorder()
    for w in wrappers.values():
        w.call.method = rec
    with torch.no_grad():
        model(images(2))
    assert rec._calls == [(64, pytest.approx(147 ** -0.5)), (16, pytest.approx(144 ** -0.5))]


def test_full_size_t2t_vit_t_24_shapes():
    model = create_t2t_vit("t2t_vit_t_24")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(64.1e6, rel=0.01)  # README: 64.1M
    att1 = model.tokens_to_token.attention1.attn
    assert isinstance(att1, TokenAttention) and att1.scale == 147 ** -0.5 and att1.in_dim == 64
    assert model.tokens_to_token.attention2.attn.scale == 576 ** -0.5
    assert model.tokens_to_token.num_patches == 196


# --- which layers are swapped ----------------------------------------------------------------
def test_swap_reaches_named_layers_only():
    model = tiny_t2t()
    assert list(attention_layers(model)) == ["t2t1", "t2t2", "block0", "block1"]
    rec = Recorder()
    wrappers = swap_attention(model, ["t2t2", "block1"], rec)
    assert list(wrappers) == ["t2t2", "block1"]
    assert isinstance(model.tokens_to_token.attention2.attn, SwappedTokenAttention)
    assert isinstance(model.blocks[1].attn, SwappedTimmAttention)
    assert type(model.tokens_to_token.attention1.attn) is TokenAttention
    assert not isinstance(model.blocks[0].attn, SwappedTimmAttention)
    with torch.no_grad():
        model(images(2))
    assert [n for n, _ in rec._calls] == [16, 5]  # t2t2 (4×4 tokens), block1 (2×2 + class token)


def test_task_layers_default_all_and_errors():
    t = tasks.build(task_cfg(), "cpu", 0)
    assert t.layers == ["t2t1", "t2t2"]  # the papers' choice for T2T-ViT
    t = tasks.build(task_cfg(model="vit_tiny_patch16_224", model_kwargs=TINY_VIT), "cpu", 0)
    assert t.layers == ["block0", "block1"]  # all blocks for ViT
    t = tasks.build(task_cfg(layers="all"), "cpu", 0)
    assert t.layers == ["t2t1", "t2t2", "block0", "block1"]
    t = tasks.build(task_cfg(layers=["tokens_to_token.attention2.attn", "block0"]), "cpu", 0)
    assert t.layers == ["t2t2", "block0"]
    with pytest.raises(ValueError, match="task.layers.*candidates"):
        tasks.build(task_cfg(layers=["t2t3"]), "cpu", 0)
    t = tasks.build(task_cfg(layer_overrides={"block1": {"nb_features": 4}}), "cpu", 0)
    with pytest.raises(ValueError, match="task.layer_overrides"):
        next(t.run(methods.build("performer"), Meter.quick(samples=1)))


# --- end to end through run() ----------------------------------------------------------------
def _check_row(row, first_layer: str, n: int):
    for key in ("top1", "top5", "exact_top1", "agreement"):
        assert 0.0 <= row[key] <= 100.0
    assert row["top5"] >= row["top1"]
    assert row["num_images"] == 5 and row["batch"] == 4 and row["n"] == n
    for key in (f"{first_layer}_latency_ms", f"exact_{first_layer}_latency_ms", f"{first_layer}_speedup",
                "latency_ms", "exact_latency_ms", "speedup", "images_per_s", "attn_latency_ms"):
        assert row[key] > 0, key
    assert "synthetic" in row["note"] and "random-init" in row["note"]


def test_run_t2t_performer_with_per_layer_overrides():
    # layer t2t2 takes preset t2t_layer2's performer knobs (64 features), then the explicit override
    cfg = task_cfg(layer_presets={"t2t2": "t2t_layer2"}, layer_overrides={"t2t1": {"nb_features": 8}})
    task = tasks.build(cfg, "cpu", 0)
    m = methods.build("performer")
    m.reseed(0)
    rows = list(task.run(m, Meter.quick(samples=2)))
    assert len(rows) == 1
    row = rows[0]
    _check_row(row, "t2t1", 64)
    assert row["t2t2_n"] == 16 and row["heads"] == 1 and row["head_dim"] == 16
    assert row["t2t1_nb_features"] == 8 and row["t2t2_nb_features"] == 64 and row["nb_features"] == 8
    assert "t2t1: nb_features=8" in row["layer_overrides"]
    # the same seed gives the same accuracy figures
    m2 = methods.build("performer")
    m2.reseed(0)
    row2 = next(tasks.build(cfg, "cpu", 0).run(m2, Meter.quick(samples=1)))
    assert (row2["top1"], row2["agreement"]) == (row["top1"], row["agreement"])


def test_run_vit_performer_and_exact():
    task = tasks.build(task_cfg(model="vit_tiny_patch16_224", model_kwargs=TINY_VIT), "cpu", 0)
    row = next(task.run(methods.build("performer", nb_features=4), Meter.quick(samples=1)))
    _check_row(row, "block0", 17)
    assert "block1_latency_ms" in row
    row = next(task.run(methods.build("exact"), Meter.quick(samples=1)))
    assert row["agreement"] == 100.0 and row["top1"] == row["exact_top1"]


# --- checkpoints -----------------------------------------------------------------------------
def test_official_format_checkpoint_loads(tmp_path):
    src = tiny_t2t(seed=3)
    state = {"module." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "tiny_T2T_ViTt.pth.tar"
    torch.save({"epoch": 309, "arch": "T2t_vit_t_14", "state_dict": {}, "state_dict_ema": state}, path)
    x = images(2)
    with torch.no_grad():
        ref = src(x)
    task = tasks.build(task_cfg(checkpoint=str(path), pretrained=True), "cpu", 7)
    assert task.weights == "checkpoint:tiny_T2T_ViTt.pth.tar"
    with torch.no_grad():
        torch.testing.assert_close(task.model(x), ref)
    # a plain state dict and a 'state_dict' entry are read too
    assert extract_state_dict(src.state_dict()).keys() == extract_state_dict({"state_dict": state}).keys()
    with pytest.raises(ValueError, match="state dict"):
        extract_state_dict({"epoch": 3})


def test_non_t_variant_checkpoint_and_swap(tmp_path):
    src = tiny_t2t("t2t_vit_7", seed=4)
    assert "tokens_to_token.attention1.w" in src.state_dict()  # fixed features live in the checkpoint
    path = tmp_path / "t2t7.pth"
    torch.save(src.state_dict(), path)
    task = tasks.build(task_cfg(model="t2t_vit_7", checkpoint=str(path)), "cpu", 0)
    assert task.layers == ["t2t1", "t2t2"]
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(task.model(x), src(x))
        wrappers = swap_attention(task.model, ["t2t1"])
        assert isinstance(task.model.tokens_to_token.attention1, SwappedTokenPerformer)
        assert wrappers["t2t1"].scale == 1.0  # its kernel is exp(q·k)
        assert torch.isfinite(task.model(x)).all()


# --- clear errors ----------------------------------------------------------------------------
def test_missing_data_root_names_the_key(monkeypatch, tmp_path):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="task.data_root"):
        tasks.build(task_cfg(data="imagenet", data_root=str(tmp_path / "nowhere")), "cpu", 0)
    with pytest.raises(FileNotFoundError, match="task.data_root"):
        tasks.build(task_cfg(data="imagenet", data_root=None), "cpu", 0)


def test_imagenet_folder_with_limit(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("n01", "n02"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(3):
            arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "val" / cls / f"{i}.png")
    task = tasks.build(task_cfg(data="imagenet", data_root=str(tmp_path), limit=4, workers=0), "cpu", 0)
    xs, ys = zip(*[(x, y) for x, y in task.loader])
    assert torch.cat(xs).shape == (4, 3, 32, 32) and set(torch.cat(ys).tolist()) <= {0, 1}


def test_missing_t2t_weights_names_checkpoint_key(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="task.checkpoint"):
        tasks.build(task_cfg(pretrained=True), "cpu", 0)
    with pytest.raises(FileNotFoundError, match="task.checkpoint"):
        tasks.build(task_cfg(checkpoint=str(tmp_path / "none.pth")), "cpu", 0)
    with pytest.raises(ValueError, match="task.model"):
        tasks.build(task_cfg(model="no_such_vit"), "cpu", 0)
