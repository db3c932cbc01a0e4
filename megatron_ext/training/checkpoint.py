"""Sharded checkpoints (megatron.core.dist_checkpointing) that a killed save cannot damage.

Layout under <run_dir>/checkpoints:
    step_000010/        a complete dist_checkpointing directory (model, optimizer, scheduler,
                        step, loader position per DP rank, RNG per rank: CPU, CUDA
                        and Megatron's tensor-parallel tracker)
    latest              text file naming the newest complete checkpoint
A save writes into step_XXXXXX.tmp, renames it into place once every rank has finished, then
replaces `latest` atomically (write + os.replace). A save killed at any point leaves the previous
checkpoint and pointer untouched; leftover *.tmp directories are removed by the next save.
Model tensors are sharded by TP/PP, so a checkpoint written at one layout loads at another
(weights; the optimizer state is only resumed at the same layout).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_ext.training.ckpt_layout import mark_pipeline_replicas, per_layer, strip_wrapper_prefix
from megatron_ext.training.grads import pipeline_replicated_params
from megatron_ext.training.optim import synced_parameters

log = logging.getLogger(__name__)
# The distributed optimizer's state, two ways (docs/GPU.md, "Checkpoints"):
# - CPU/gloo: canonical (per-parameter, model-space) form, gathered over DP onto DP rank 0 through
#   Megatron's gloo groups: reshardable in TP/PP/DP, and the only non-deprecated format whose
#   gather runs without CUDA ("fully_sharded_model_space" fails in 0.16 on flattened ranges).
# - CUDA: each DP rank writes its own shard of the flat buffers (Megatron-LM's default): no gather,
#   no DP rank 0 holding the whole state, every rank writes at once; the state resumes at the same
#   TP/PP only (weights still load at any layout: load_weights).
# A checkpoint records its format (content metadata), so either loads wherever it resumes.
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                  "distrib_optim_fully_reshardable_mem_efficient": True}
PARALLEL_OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def _parallel_save() -> bool:
    return torch.cuda.is_available()


def optimizer_format() -> dict:
    return dict(PARALLEL_OPTIM_METADATA if _parallel_save() else OPTIM_METADATA)


def _save_strategy():
    """Megatron's fully parallel save on CUDA: the replicated tensors' writes spread over DP ranks."""
    if not _parallel_save():
        return None
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(),
                                            ps.get_data_parallel_group(with_context_parallel=True))


def step_dir_name(step: int) -> str:
    """The one name of a step's checkpoint directory (the main job compares with it too)."""
    return f"step_{step:06d}"


def latest(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under `root` (a checkpoints dir or a run dir), or None."""
    root = Path(root)
    for base in (root, root / "checkpoints"):
        pointer = base / "latest"
        if pointer.is_file():
            path = base / pointer.read_text().strip()
            if not path.is_dir():
                raise FileNotFoundError(f"{pointer} names {path}, which does not exist")
            return path
    if (root / "metadata.json").is_file():  # a checkpoint directory itself
        return root
    return None


def _ranks():
    from megatron.core import parallel_state as ps

    return (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())


def _model_state(model) -> dict:
    _, pp, _, _ = _ranks()
    sd = per_layer(model.sharded_state_dict())
    if model.injected is not model:  # a wrapper (VisionLanguageModel): its keys start "lm."
        sd = strip_wrapper_prefix(sd)
    return mark_pipeline_replicas(sd, pipeline_replicated_params(model, trainable_only=False), pp)


def _state(model, optimizer, scheduler, loader, step: int, is_loading: bool, extra: dict,
           optim_format: dict | None = None) -> dict:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    tp, pp, dp_rank, dp = _ranks()
    rank, world = dist.get_rank(), dist.get_world_size()
    model_sd = _model_state(model)
    state = {"model": model_sd, "step": step, "extra": extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                          metadata=optim_format or OPTIM_METADATA)
        state["scheduler"] = scheduler.state_dict()
        # one loader position per DP rank (replicated over TP/PP), one RNG state per process
        state["loader"] = ShardedObject("loader", None if is_loading else loader.state_dict(),
                                        (dp,), (dp_rank,), replica_id=(0, tp, pp))
        state["rng"] = ShardedObject("rng", None if is_loading else rng_state(),
                                     (world,), (rank,), replica_id=0)
    return state


def save(root: Path, step: int, model, optimizer, scheduler, loader, extra: dict,
         keep: int = 2, die_midway: bool = False) -> Path:
    from megatron.core import dist_checkpointing

    root = Path(root)
    final, tmp = root / step_dir_name(step), root / f"{step_dir_name(step)}.tmp"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    fmt = optimizer_format()
    with synced_parameters(optimizer):  # the step's weights, also with the all-gather overlapped
        dist_checkpointing.save(_state(model, optimizer, scheduler, loader, step, False, extra, fmt), str(tmp),
                                sharded_strategy=_save_strategy(), content_metadata=fmt)
    if die_midway:  # fault injection (tests): the data is written, nothing is renamed yet
        log.error("debug.die_in_save_at_step=%d: exiting in the middle of the save", step)
        raise SystemExit(17)  # (not os._exit: that strands the checkpoint writer's children)
    dist.barrier()
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / "latest")
        done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def rng_state() -> dict:
    """This process's generators: the CPU one, the current CUDA device's, and Megatron's tracker
    (the tensor-parallel dropout/init streams, forked from the CUDA generator)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}}


def set_rng_state(state) -> None:
    """Restore rng_state(); a bare tensor (checkpoints written before the CUDA state was saved) is
    the CPU generator alone."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        if not torch.cuda.is_available():
            raise RuntimeError("this checkpoint holds a CUDA RNG state; resume it on a CUDA machine "
                               "(or load its weights with train.init_from)")
        torch.cuda.set_rng_state(state["cuda"])
    if state["tracker"]:
        get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state["tracker"].items()})


def _materialise_optimizer_state(optimizer) -> None:
    """torch's Adam creates its state (and `step`) lazily; the distributed optimizer's state_dict
    needs it to exist before a load fills it in. Megatron's own dummy step does that (zero grads;
    the loaded state and weights replace whatever it touched)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def load(path: Path, model, optimizer, scheduler, loader) -> dict:
    """Everything back (same TP/PP/DP layout): returns {"step", "extra"}."""
    from megatron.core import dist_checkpointing

    _materialise_optimizer_state(optimizer)
    fmt = dist_checkpointing.load_content_metadata(str(path)) or OPTIM_METADATA  # older: the gloo format
    state = dist_checkpointing.load(_state(model, optimizer, scheduler, loader, 0, True, {}, fmt), str(path))
    model.load_state_dict(state["model"])
    with torch.no_grad():  # the per-rank format copies into fp32 main params that view the weights
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return {"step": int(state["step"]), "extra": state["extra"]}


def _stored_keys(sh) -> set:
    """The checkpoint keys an entry reads (a factory, e.g. SwiGLU's fc1, stores what it builds)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.dict_utils import nested_values

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
    import dataclasses

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
    from megatron.core import dist_checkpointing

    saved = set(dist_checkpointing.load_tensors_metadata(str(path)))
    sharded = {"model": _under_saved_names(_model_state(model), saved)}
    present = {k: v for k, v in sharded["model"].items() if _stored_keys(v) <= saved}
    missing = sorted(k for k in sharded["model"] if k not in present)
    if not present:
        raise RuntimeError(f"{path}: none of this model's tensors are in the checkpoint")
    state = dist_checkpointing.load({"model": present}, str(path))
    result = model.load_state_dict(state["model"], strict=False)
    # Megatron's extra state entries (e.g. `_extra_state`) may be absent; real tensors may not be
    absent = [k for k in result.missing_keys if not k.endswith("_extra_state") and k in missing]
    return {"loaded": len(present), "kept_at_init": absent}
