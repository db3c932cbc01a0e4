"""Trainable sets by named parameter groups; each method's spec names the groups that train in
each stage (MethodSpec.stages, megatron_ext/methods/training.py default_trainable).

A method plugs in by naming groups: a model may define `parameter_groups() -> {group: [params]}`;
otherwise parameters are grouped by where they live (below). Every parameter belongs to exactly
one group, so a stage's trainable set is explicit and checkable parameter by parameter.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

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
    owner = getattr(model, "lm", model)
    generator_ids = {id(p) for p in owner.generator_parameters()} if hasattr(owner, "generator_parameters") else set()
    tower = getattr(model, "vision", None)
    unused = {f"vision.model.{n}" for n in getattr(tower, "unused", ())}
    for name, p in named:
        groups["unused" if name in unused else _group_of(name, generator_ids, p)].append((name, p))
    return groups


def apply_trainable(model: torch.nn.Module, trainable: list[str]) -> dict[str, tuple[int, int]]:
    """Set requires_grad by group; returns {group: (tensors, elements)} of this rank, all groups."""
    groups = parameter_groups(model)
    unknown = set(trainable) - set(groups)
    if unknown:
        raise ValueError(f"train.trainable names unknown group(s) {sorted(unknown)}; groups: {sorted(groups)}")
    summary = {}
    for group, params in groups.items():
        for _, p in params:
            p.requires_grad_(group in trainable)
        summary[group] = (len(params), sum(p.numel() for _, p in params))
    for group in trainable:
        if not groups[group]:
            log.warning("trainable group %r has no parameters on this rank (e.g. no vision tower in "
                        "this model, or none of its layers on this pipeline stage)", group)
    return summary
