"""ROSE's FLOPs beyond the plain LLM (megatron_ext/flops.py's conventions)."""

from __future__ import annotations

from megatron_ext.core.flops import proj_dims
from megatron_ext.methods.rose.config import RoseConfig


def rose_flops(llm: dict, rose: RoseConfig, text: int, visual: int, visual_dim: int,
               merged: bool = False) -> dict:
    """Rotations (LU per block and image + two triangular solves per token) and the VRMG."""
    equipped = len(rose.equipped_layers(llm["layers"]))
    dims = proj_dims(llm)
    inputs = [dims[p][0] for p in rose.projections if p in dims]
    rot = 0.0
    for d_in in inputs:
        b = d_in // rose.blocks
        rot += rose.blocks * (2.0 / 3.0) * b ** 3 + 2.0 * text * d_in * b
    w, queries = rose.generator_width, len(rose.projections) * rose.blocks
    gen = (2.0 * queries * w * w * 2                  # query and output projections
           + 2.0 * visual * visual_dim * 2 * w        # keys and values of the visual tokens
           + 4.0 * queries * visual * w               # attention
           + sum(2.0 * rose.blocks * w * (d_in // rose.blocks) * (d_in // rose.blocks - 1) / 2
                 for d_in in inputs))                 # heads to T
    return {"rotations": equipped * rot, "generator": equipped * gen}
