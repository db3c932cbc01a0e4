"""Named parameter groups: every parameter of a model belongs to exactly one group, so a stage's
trainable set (MethodSpec.stages, applied by training/stages.py) is explicit and checkable
parameter by parameter.

A method plugs in by naming groups: a model may define `parameter_groups() -> {group: [params]}`;
otherwise parameters are grouped by where they live (below).
"""

from __future__ import annotations

import torch

# "unused": parameters whose outputs nothing reads (a vision tower's blocks after the feature layer,
# its pooling head); no stage trains them
GROUPS = ("generator", "vision", "lora", "embedding", "aux", "llm", "unused")


def _group_of(name: str, generator_ids: set, param) -> str:
    if id(param) in generator_ids or name.startswith("generator") or ".generator." in name:
        return "generator"
    if name.startswith("vision.") or ".vision." in name and "vision_embedding" not in name:
        return "vision"
    if "vision_embedding." in name:
        return "embedding"
    if ".aux_head." in name:
        return "aux"
    if ".lora_" in name:
        return "lora"
    return "llm"


def parameter_groups(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """{group: [(name, param)]} for every parameter of `model` (this rank's shard)."""
    groups = {g: [] for g in GROUPS}
    named = list(model.named_parameters())
    if hasattr(model, "parameter_groups"):
        by_id = {id(p): n for n, p in named}
        for group, params in model.parameter_groups().items():
            groups.setdefault(group, []).extend((by_id[id(p)], p) for p in params)
        return groups
    # VLoRA's W_s lives in the LLM's linears but belongs to the generator
    generator_ids = {id(p) for p in model.injected.generator_parameters()}
    tower = getattr(model, "vision", None)
    unused = {f"vision.model.{n}" for n in getattr(tower, "unused", ())}
    for name, p in named:
        groups["unused" if name in unused else _group_of(name, generator_ids, p)].append((name, p))
    return groups
