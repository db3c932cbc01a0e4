"""Trainable sets by named parameter groups (core/param_groups.py); each method's spec names the
groups that train in each stage (MethodSpec.stages, training/model.py trainable_groups)."""

from __future__ import annotations

import logging

import torch

from megatron_ext.core.param_groups import parameter_groups

log = logging.getLogger(__name__)


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
