"""One checkpoint tensor per decoder layer instead of Megatron's layer-stacked tensors.

Megatron's TransformerBlock stacks layer i's `...linear_proj.weight` into one global tensor with a
leading layer axis; dist_checkpointing then requires every layer to provide it. With injection,
equipped layers hold their linears per fused part (`linear_proj.parts.o.weight`, ROSE) and the
stacked tensors have holes, so the save is rejected. Keyed per layer
(`decoder.layers.<global layer>.self_attention.linear_proj.weight`), every tensor is complete,
and the layer index stays global, so checkpoints still reshard across TP and PP.
"""

from __future__ import annotations

import dataclasses

from megatron.core.dist_checkpointing.dict_utils import dict_list_map_outplace, nested_values
from megatron.core.dist_checkpointing.mapping import ShardedBase, ShardedObject, ShardedTensor, ShardedTensorFactory

_MARK = "decoder.layers."


def _relabel_key(key: str, layer: int) -> str:
    return key.replace(_MARK, f"{_MARK}{layer}.", 1)


def _relabel(sh):
    if isinstance(sh, ShardedTensor) and _MARK in sh.key and sh.prepend_axis_num >= 1:
        layer = sh.global_offset[0]
        return dataclasses.replace(
            sh, key=_relabel_key(sh.key, layer), global_shape=(1,) + tuple(sh.global_shape[1:]),
            global_offset=(0,) + tuple(sh.global_offset[1:]),
            axis_fragmentations=(1,) + tuple(sh.axis_fragmentations[1:]))
    if isinstance(sh, ShardedObject) and _MARK in sh.key and len(sh.global_shape) >= 1:
        layer = sh.global_offset[0]
        return dataclasses.replace(sh, key=_relabel_key(sh.key, layer),
                                   global_shape=(1,) + tuple(sh.global_shape[1:]),
                                   global_offset=(0,) + tuple(sh.global_offset[1:]))
    if isinstance(sh, ShardedTensorFactory) and _MARK in sh.key:
        build = sh.build_fn

        def build_fn(*args, **kwargs):
            return per_layer(build(*args, **kwargs))

        # a factory key must be unique too: the layer comes from the tensors it builds
        built = per_layer(build(sh.key, sh.data, sh.replica_id, sh.flattened_range))
        layer_key = next(nested_values({"built": built})).key  # a dict, a list or one tensor
        return dataclasses.replace(sh, key=layer_key.rsplit(".", 1)[0] + "." + sh.key.rsplit(".", 1)[1],
                                   build_fn=build_fn)
    return sh


def per_layer(sharded_state_dict: dict) -> dict:
    """The model's sharded state dict with layer-stacked entries split per global layer."""
    return dict_list_map_outplace(_relabel, sharded_state_dict)


def mark_pipeline_replicas(sharded_state_dict: dict, params, pp_rank: int) -> dict:
    """Entries of parameters every pipeline stage holds a replica of (VLoRA's generator): the
    same key on every stage, so only stage 0's copy is the main replica."""
    ids = {id(p) for p in params}
    if not ids or pp_rank == 0:
        return sharded_state_dict

    def mark(sh):
        if isinstance(sh, ShardedTensor) and id(sh.data) in ids:
            rid = sh.replica_id if isinstance(sh.replica_id, tuple) else (sh.replica_id,)
            return dataclasses.replace(sh, replica_id=(pp_rank,) + tuple(rid[1:]))
        return sh

    return dict_list_map_outplace(mark, sharded_state_dict)


def strip_wrapper_prefix(sharded_state_dict: dict, prefix: str = "lm.") -> dict:
    """Checkpoint keys of a VisionLanguageModel's LLM without the wrapper's `lm.`: the LLM's
    tensors keep one name whether or not a vision tower is attached (S1 on features -> S2 on
    images). Only the stored keys change; the dict keys still match the module's state_dict."""
    def strip(sh):
        if isinstance(sh, ShardedBase) and sh.key.startswith(prefix):
            return dataclasses.replace(sh, key=sh.key[len(prefix):])
        return sh

    return dict_list_map_outplace(strip, sharded_state_dict)
