"""T2T-ViT (Yuan et al., ICCV 2021), written from the official yitu-opensource/T2T-ViT code.

Follows ``models/t2t_vit.py``, ``models/token_transformer.py``, ``models/token_performer.py``
and ``models/transformer_block.py`` of that repository: module and parameter names match, so
its released checkpoints (``82.6_T2T_ViTt_24.pth.tar`` …) load with ``strict=True``.

The Tokens-to-Token module unfolds the image (7×7, stride 4) into n=(H/4)² tokens of dim
3·49=147, runs one *token transformer* (one head projecting to ``token_dim``=64), re-folds,
unfolds again (3×3, stride 2: n=(H/8)² tokens of dim 64·9=576), runs a second token transformer,
unfolds once more and projects to ``embed_dim``. At 224² the two token transformers attend over
3136 and 784 tokens: the layers the KDEformer / WildCat / Thinformer papers replace.

The quirk the swap must keep: the token transformer's scale is ``(dim // num_heads) ** -0.5`` with
``dim`` the *input* width (147, 576), not the head width 64. Its output is ``v + proj(attn·v)``
(v, of width ``token_dim``, is the skip connection because the input width differs).

Departures: the backbone blocks are timm's ``vision_transformer.Block`` (same parameter names and
maths as the official ``transformer_block.Block``), so one timm attention wrapper serves ViT,
DeiT and T2T-ViT blocks. The official factories set ``qk_scale = embed_dim ** -0.5`` only on
their unused ``pretrained=True`` path; evaluation (its ``main.py``) and the KDEformer / Thinformer
demos build with ``pretrained=False``, i.e. the default head-dim scale used here.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Block

_RELEASES = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"

# name -> (T2T token module, embed_dim, depth, num_heads, mlp_ratio, checkpoint file)
VARIANTS: dict[str, tuple[str, int, int, int, float, str]] = {
    "t2t_vit_7": ("performer", 256, 7, 4, 2.0, "71.7_T2T_ViT_7.pth.tar"),
    "t2t_vit_10": ("performer", 256, 10, 4, 2.0, "75.2_T2T_ViT_10.pth.tar"),
    "t2t_vit_12": ("performer", 256, 12, 4, 2.0, "76.5_T2T_ViT_12.pth.tar"),
    "t2t_vit_14": ("performer", 384, 14, 6, 3.0, "81.5_T2T_ViT_14.pth.tar"),
    "t2t_vit_19": ("performer", 448, 19, 7, 3.0, "81.9_T2T_ViT_19.pth.tar"),
    "t2t_vit_24": ("performer", 512, 24, 8, 3.0, "82.3_T2T_ViT_24.pth.tar"),
    "t2t_vit_t_14": ("transformer", 384, 14, 6, 3.0, "81.7_T2T_ViTt_14.pth.tar"),
    "t2t_vit_t_19": ("transformer", 448, 19, 7, 3.0, "82.4_T2T_ViTt_19.pth.tar"),
    "t2t_vit_t_24": ("transformer", 512, 24, 8, 3.0, "82.6_T2T_ViTt_24.pth.tar"),
}

# Evaluation transform of the official code (timm conventions: resolve_data_config reads this).
PRETRAINED_CFG: dict[str, Any] = {
    "num_classes": 1000,
    "input_size": (3, 224, 224),
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "classifier": "head",
}


def is_t2t(name: str) -> bool:
    return name.lower() in VARIANTS


def checkpoint_url(name: str) -> str:
    return _RELEASES + VARIANTS[name.lower()][5]


class TokenAttention(nn.Module):
    """One token-transformer attention: qkv maps ``dim`` -> 3·``in_dim``; scale from ``dim``.

    Returns ``v + proj(softmax(scale·q kᵀ) v)`` of width ``in_dim`` (official: one head).
    """

    def __init__(self, dim: int, in_dim: int, num_heads: int = 1, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_dim = in_dim
        self.scale = qk_scale or (dim // num_heads) ** -0.5  # the T2T quirk: input width, not in_dim
        self.qkv = nn.Linear(dim, in_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, dim) -> q, k, v of shape (B, H, N, in_dim // H)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.in_dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def finish(self, out: Tensor, v: Tensor) -> Tensor:
        """Attention output (B, H, N, Dh) -> ``v + proj(out)`` as (B, N, in_dim)."""
        b, h, n, dh = out.shape
        y = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, h * dh)))
        return v.transpose(1, 2).reshape(b, n, h * dh) + y

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_heads(x)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.finish(attn @ v, v)


class TokenTransformer(nn.Module):
    """Official ``Token_transformer``: x = attn(norm1(x)); x = x + mlp(norm2(x))."""

    def __init__(self, dim: int, in_dim: int, num_heads: int = 1, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, in_dim=in_dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_features=in_dim, hidden_features=int(in_dim * mlp_ratio), out_features=in_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """Official ``Token_performer``: FAVOR-style linear attention with fixed features ``w``.

    ``kqv`` is split in the order k, q, v; output ``v + proj(Â v)``, then ``+ mlp(norm2(·))``.
    Its kernel is exp(q·k) (scale 1), estimated with the fixed random features ``w`` (saved in
    the checkpoint), so the untouched model is itself an approximation of softmax attention.
    """

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(0.1)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.epsilon = 1e-8
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), nn.Dropout(0.1))
        self.m = int(in_dim * kernel_ratio)
        w = nn.init.orthogonal_(torch.empty(self.m, in_dim)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        return q, k, v

    def features(self, x: Tensor) -> Tensor:
        """exp(w·x − |x|²/2)/√m: positive random features of exp(q·k)."""
        sq = 0.5 * (x * x).sum(dim=-1, keepdim=True)
        return torch.exp(x.float() @ self.w.T - sq) / math.sqrt(self.m)

    def builtin_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qp, kp = self.features(q), self.features(k)
        den = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, N, 1)
        return (qp @ (kp.transpose(1, 2) @ v.float())) / (den + self.epsilon)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split(self.norm1(x))
        x = v + self.dp(self.proj(self.builtin_attention(q, k, v)))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Soft split (unfold) -> token layer -> re-fold, twice, then a last unfold and projection."""

    def __init__(self, img_size: int = 224, tokens_type: str = "transformer", in_chans: int = 3,
                 embed_dim: int = 768, token_dim: int = 64) -> None:
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=(7, 7), stride=(4, 4), padding=(2, 2))
        self.soft_split1 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.soft_split2 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        if tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim, num_heads=1, mlp_ratio=1.0)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim, num_heads=1, mlp_ratio=1.0)
        elif tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, kernel_ratio=0.5)
        else:
            raise ValueError(f"tokens_type must be 'transformer' or 'performer', got {tokens_type!r}.")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.num_patches = (img_size // 16) ** 2

    @staticmethod
    def _refold(x: Tensor) -> Tensor:
        b, n, c = x.shape
        side = math.isqrt(n)
        return x.transpose(1, 2).reshape(b, c, side, side)

    def forward(self, x: Tensor) -> Tensor:
        x = self.soft_split0(x).transpose(1, 2)
        x = self.soft_split1(self._refold(self.attention1(x))).transpose(1, 2)
        x = self.soft_split2(self._refold(self.attention2(x))).transpose(1, 2)
        return self.project(x)


def sinusoid_encoding(n_position: int, d_hid: int) -> Tensor:
    """(1, n_position, d_hid) table: sin on even, cos on odd channels (computed in float64)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(d_hid)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), (2 * (j // 2)).double() / d_hid)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


class T2TViT(nn.Module):
    """T2T module, class token, fixed sinusoidal positions, ``depth`` ViT blocks, head on the class token."""

    def __init__(self, img_size: int = 224, tokens_type: str = "transformer", in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, token_dim: int = 64) -> None:
        super().__init__()
        if img_size % 16:
            raise ValueError(f"T2T-ViT needs an image size divisible by 16, got {img_size}.")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        n = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_encoding(n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = dict(PRETRAINED_CFG, num_classes=num_classes, input_size=(in_chans, img_size, img_size))
        self.default_cfg = self.pretrained_cfg
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def create_t2t_vit(name: str, **kwargs: Any) -> T2TViT:
    """Build a variant by name (``t2t_vit_t_24`` …); ``kwargs`` override the variant's sizes."""
    key = name.lower()
    if key not in VARIANTS:
        raise ValueError(f"unknown T2T-ViT variant {name!r}; available: {', '.join(VARIANTS)}.")
    tokens_type, embed_dim, depth, heads, mlp_ratio, _ = VARIANTS[key]
    cfg = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio)
    cfg.update(kwargs)
    return T2TViT(**cfg)


def extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """The weights inside a checkpoint: ``state_dict_ema``, else ``state_dict``/``model``, else the
    object itself; a leading ``module.`` (DataParallel) is stripped from every key."""
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError("checkpoint holds no state dict (expected 'state_dict_ema', 'state_dict' or tensors).")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load an official-format checkpoint file into ``model`` (strict)."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(extract_state_dict(obj), strict=True)
