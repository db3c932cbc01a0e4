"""Tiny ROSE models and inputs shared by the single- and multi-process tests."""

import torch

from megatron_ext.methods.rose import build_rose
from megatron_ext.core.presets import load_preset

PRESET = load_preset("tiny")
VOCAB = PRESET["llm"]["vocab_size"]
VISUAL_DIM = PRESET["vision"]["hidden_size"]


def inputs(batch=2, seq=16, visual_tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    return dict(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq),
                attention_mask=None, visual_features=torch.randn(batch, visual_tokens, VISUAL_DIM, generator=g),
                labels=torch.roll(ids, -1, dims=1))


def randomize_generator(model, seed=0, scale=0.05):
    """Give the zero-initialised T heads non-zero weights so rotations differ from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".to_T." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def tiny_rose(**kwargs):
    torch.manual_seed(0)
    return build_rose(PRESET, backend="local", **kwargs)
