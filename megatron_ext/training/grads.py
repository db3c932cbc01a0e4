"""Gradient finalisation after the last micro-batch (config.finalize_model_grads_func).

Megatron's finalize_model_grads does the data-parallel reduction, embedding and sequence-parallel
all-reduces. Before it, generator replicas that a method keeps on every pipeline stage (VLoRA's
queries mix all equipped blocks) get their per-stage gradients summed over the pipeline group;
that must happen on the full local main_grad, i.e. before the DP reduce-scatter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def pipeline_replicated_params(model, trainable_only: bool = True) -> list:
    """Parameters replicated over pipeline stages whose grads are partial per stage."""
    return [p for p in model.pipeline_replicated_parameters() if p.requires_grad or not trainable_only]


def make_finalize(model):
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    replicated = pipeline_replicated_params(model)
    # finalize_model_grads looks for tied word embeddings on the outermost module with
    # `pre_process` (our wrapper, not the GPTModel inside): answer for the GPTModel
    inner = getattr(model, "lm", model)  # a VisionLanguageModel wraps the injected LLM
    lm = getattr(inner, "language_model", None)
    if lm is not None and not hasattr(model, "share_embeddings_and_output_weights"):
        if not hasattr(model, "pre_process"):
            model.pre_process, model.post_process = inner.pre_process, inner.post_process
        model.share_embeddings_and_output_weights = lm.share_embeddings_and_output_weights
        model.shared_embedding_or_output_weight = lm.shared_embedding_or_output_weight

    def finalize(model_chunks, num_tokens=None, pg_collection=None, force_all_reduce=False):
        if replicated and parallel_state.get_pipeline_model_parallel_world_size() > 1:
            group = parallel_state.get_pipeline_model_parallel_group()
            for p in replicated:
                dist.all_reduce(p.main_grad, group=group)
        finalize_model_grads(model_chunks, num_tokens, pg_collection=pg_collection,
                             force_all_reduce=force_all_reduce)

    return finalize
