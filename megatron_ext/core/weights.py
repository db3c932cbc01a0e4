"""A model's weights in a sharded checkpoint (megatron.core.dist_checkpointing): the keys it
saves under (one per decoder layer, core/ckpt_layout.py) and the weights-only load that any
TP/PP layout and either backend can read. The full training state (optimizer, loader, RNG)
around it is training/checkpoint.py's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

from megatron_ext.core.ckpt_layout import mark_pipeline_replicas, per_layer, strip_wrapper_prefix


def model_state(model) -> dict:
    """The model's sharded state dict as checkpoints store it: per decoder layer, without a
    wrapper's `lm.`, with the pipeline-replicated parameters (VLoRA's generator) kept once."""
    sd = per_layer(model.sharded_state_dict())
    if model.injected is not model:  # a wrapper (VisionLanguageModel): its keys start "lm."
        sd = strip_wrapper_prefix(sd)
    replicated = list(model.pipeline_replicated_parameters())
    return mark_pipeline_replicas(sd, replicated, ps.get_pipeline_model_parallel_rank())


def _stored_keys(sh) -> set:
    """The checkpoint keys an entry reads (a factory, e.g. SwiGLU's fc1, stores what it builds)."""
    if isinstance(sh, ShardedTensorFactory):
        return {t.key for t in nested_values(sh.build())}
    return {getattr(sh, "key", None)}


# One norm, two checkpoint names: TE fuses the pre-attention and pre-MLP norms into linear_qkv /
# linear_fc1 (layer_norm_weight), and Megatron's local spec saves its own norms under those fused
# names (its sharded_state_dict_keys_map); a TE layer whose linears a method replaced has a TENorm
# of its own (core.specs.unfuse_te_norms), saved as input_layernorm / pre_mlp_layernorm. A stage that
# switches backends (S1 local, S2 TE) reads whichever name the checkpoint holds.
NORM_ALIASES = ((".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
                (".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"))


def _norm_alias(key: str) -> Optional[str]:
    for a, b in NORM_ALIASES:
        for mine, other in ((a, b), (b, a)):
            if key.endswith(mine):
                return key[: -len(mine)] + other
    return None


def _under_saved_names(entries: dict, saved: set) -> dict:
    """Entries whose key the checkpoint lacks but holds under the other backend's norm name
    (S1 on local layers, S2 on TE or back) read that name; the rest are unchanged."""
    out = {}
    for k, sh in entries.items():
        alias = _norm_alias(getattr(sh, "key", "") or "")
        if alias is not None and sh.key not in saved and alias in saved:
            sh = dataclasses.replace(sh, key=alias)
        out[k] = sh
    return out


def load_weights(path: Path, model) -> dict:
    """Model weights only, at any TP/PP layout (stage chaining, resharding) and across the local
    and TE backends (NORM_ALIASES). Parameters the checkpoint does not have (a part new to this
    stage) keep their initialisation and are listed."""
    saved = set(dist_checkpointing.load_tensors_metadata(str(path)))
    sharded = {"model": _under_saved_names(model_state(model), saved)}
    present = {k: v for k, v in sharded["model"].items() if _stored_keys(v) <= saved}
    missing = sorted(k for k in sharded["model"] if k not in present)
    if not present:
        raise RuntimeError(f"{path}: none of this model's tensors are in the checkpoint")
    state = dist_checkpointing.load({"model": present}, str(path))
    result = model.load_state_dict(state["model"], strict=False)
    # Megatron's extra state entries (e.g. `_extra_state`) may be absent; real tensors may not be
    absent = [k for k in result.missing_keys if not k.endswith("_extra_state") and k in missing]
    return {"loaded": len(present), "kept_at_init": absent}
