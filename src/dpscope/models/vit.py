"""A small Vision Transformer built only from layers a per-example engine has rules for.

Attention is written out with nn.Linear projections (qkv and output) and plain tensor
operations, never nn.MultiheadAttention, so each projection's per-example gradient comes from
the Linear rule. The class token and the position embedding are parameters that belong to tiny
modules of their own (`ClassToken`, `PositionEmbedding`), so the clipping engine can give each
one a rule: their per-example gradient is the output gradient (summed over positions for the
class token's single row).

Sizes (`vit_tiny`): width 128, 4 pre-norm blocks, 4 heads, MLP ratio 2 (about 0.55 M
parameters with 10 classes). Patch size from `patch_size_for`: 8 px -> 2, 28 px -> 4, 32 px -> 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dpscope.errors import ConfigError

_INIT_STD = 0.02  # truncated-normal std for projections and embeddings, as in ViT / timm


def patch_size_for(image_size: int) -> int:
    """About 8 patches per side (at least 2 px a patch), adjusted to a divisor of `image_size`.

    Wanted size round(image_size / 8) clipped to >= 2; if that does not divide the image, the
    nearest divisor that still leaves at least 2x2 patches (the larger on a tie); 1 (one token
    per pixel) when there is none, as for a prime-sized image.
    """
    wanted = max(2, round(image_size / 8))
    divisors = [d for d in range(2, image_size // 2 + 1) if image_size % d == 0]
    if not divisors:
        return 1
    return min(divisors, key=lambda d: (abs(d - wanted), -d))


class ClassToken(nn.Module):
    """Prepends one learned token to every sequence: (B, N, D) -> (B, N + 1, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """Adds a learned embedding per position: (B, T, D) -> (B, T, D)."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, num_positions, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding


class SelfAttention(nn.Module):
    """Multi-head self-attention from two nn.Linear layers (qkv in, projection out)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        weights = torch.softmax(q @ k.transpose(-2, -1) * head_dim**-0.5, dim=-1)  # (B, heads, T, T)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """Patch embedding (Conv2d, kernel = stride = patch), class token, positions, blocks, head."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        *,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        patch = patch_size_for(image_size)
        num_patches = (image_size // patch) ** 2
        self.patch_size = patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = ClassToken(dim)
        self.pos_embed = PositionEmbedding(num_patches + 1, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init()

    def _init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=_INIT_STD)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token.token, std=_INIT_STD)
        nn.init.trunc_normal_(self.pos_embed.embedding, std=_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        tokens = self.blocks(self.pos_embed(self.cls_token(tokens)))
        return self.head(self.norm(tokens[:, 0]))


def vit_tiny(in_channels: int, image_size: int, num_classes: int) -> VisionTransformer:
    return VisionTransformer(in_channels, image_size, num_classes)
