"""The transformer's pieces that the per-example engine needs to see as separate modules."""

import pytest
import torch
from torch import nn

from dpscope.models import ClassToken, PositionEmbedding, build_model, patch_size_for


@pytest.mark.parametrize("image_size,patch", [(8, 2), (28, 4), (32, 4), (64, 8), (96, 12), (7, 1), (13, 1)])
def test_patch_size_divides_the_image_and_gives_about_8_patches_a_side(image_size, patch):
    assert patch_size_for(image_size) == patch
    assert image_size % patch == 0


def test_attention_is_built_from_linear_layers_and_embeddings_own_their_parameters():
    model = build_model("vit_tiny", in_channels=1, image_size=28, num_classes=2)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    owners = {name.rpartition(".")[0]: type(model.get_submodule(name.rpartition(".")[0]))
              for name, _ in model.named_parameters()}
    assert owners["cls_token"] is ClassToken and owners["pos_embed"] is PositionEmbedding
    assert model.pos_embed.embedding.shape == (1, (28 // 4) ** 2 + 1, 128)
    assert isinstance(model.get_submodule("blocks.0.attn.qkv"), nn.Linear)


def test_class_token_and_position_embedding_compute_what_they_say():
    tokens = torch.randn(2, 3, 4)
    cls = ClassToken(4)
    nn.init.normal_(cls.token)
    out = cls(tokens)
    assert torch.equal(out[:, 1:], tokens) and torch.equal(out[0, 0], cls.token[0, 0])
    pos = PositionEmbedding(3, 4)
    nn.init.normal_(pos.embedding)
    torch.testing.assert_close(pos(tokens), tokens + pos.embedding[0])


def test_attention_gradient_reaches_every_parameter():
    model = build_model("vit_tiny", in_channels=3, image_size=32, num_classes=10)
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
