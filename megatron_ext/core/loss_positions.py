"""LossPositionsGPTModel: Megatron's GPTModel whose output layer runs only where the loss reads.

Question-answer data puts the loss on the answer and the end of the turn (about 3 of the main
job's 24 tokens), and a small LLM's output layer is a large part of its step: SmolLM2-135M's
49152 x 576 projection is a fifth of its forward FLOPs and again of its backward. For every other
position the logits, the cross-entropy and their backward are work that the loss then multiplies
by zero. When the training step passes `loss_mask` (training/step.py), the hidden states of the
masked-in positions alone go through the output layer and the cross-entropy; the per-token loss
is 0 elsewhere instead of a value the loss ignores. The same loss and gradients (up to the
rounding of a GEMM over fewer rows).

Every position still goes through the output layer where the sequence is split across ranks
(sequence or context parallel: the layer gathers it), where multi-token prediction reads every
position, at inference, and where the mask keeps most positions (nothing to save). On a GPU,
finding the positions is one host synchronisation per micro-batch.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel

KEEP_AT_MOST = 0.5  # of the positions: above it, the gather costs about what it saves


class LossPositionsGPTModel(GPTModel):
    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, loss_mask=None, **kwargs):
        keep = self._positions_to_keep(labels, loss_mask, kwargs)
        if keep is None:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args,
                                        loss_mask=loss_mask, **kwargs)
        rows, cols = keep.nonzero(as_tuple=True)            # (sample, position) of every loss token
        picked = hidden_states[cols, rows].unsqueeze(1)     # [s, b, h] -> [n, 1, h]: one sequence of n
        loss = super()._postprocess(picked, input_ids, position_ids, labels[rows, cols].unsqueeze(0),
                                    *args, loss_mask=None, **kwargs)  # [1, n]
        return loss.new_zeros(labels.shape).index_put((rows, cols), loss[0])

    def _positions_to_keep(self, labels, loss_mask, kwargs) -> torch.Tensor | None:
        """The [b, s] positions to compute, or None for all of them."""
        c = self.config
        if (labels is None or loss_mask is None or not self.post_process or c.sequence_parallel
                or c.context_parallel_size > 1 or c.mtp_num_layers is not None
                or kwargs.get("packed_seq_params") is not None or kwargs.get("inference_context") is not None
                or kwargs.get("inference_params") is not None):
            return None
        keep = loss_mask.reshape(labels.shape) != 0
        return keep if 0 < keep.sum() <= KEEP_AT_MOST * keep.numel() else None
