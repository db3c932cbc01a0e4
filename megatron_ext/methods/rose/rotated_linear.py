"""Megatron linear layers whose input is rotated per sample (ROSE's W -> R_v W, applied as R_v^T x).

`RotatedLinear` is what the ROSE layer spec puts in place of linear_qkv, linear_proj, linear_fc1
and linear_fc2 of an equipped layer. It wraps the backend's own parallel linear class (Megatron's
local ColumnParallelLinear/RowParallelLinear on CPU, Transformer Engine's on GPU), so the GEMM,
FP8 and TP communication stay those of the backend.

A fused projection (q|k|v in linear_qkv, gate|up in linear_fc1) is held as one backend linear per
part: each part gets its own rotation (docs/ARCHITECTURE.md, rule 5) and multiplies only its own output columns,
so the GEMM work equals the fused layer's. Outputs are re-assembled in Megatron's fused layout
(fused_layout.py) so attention and MLP code is untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
from torch import nn

from megatron_ext.core.context import ConditionedLayer, ConditioningContext
from megatron_ext.core.fused_layout import fuse, fused_parts, interleave_groups
from megatron_ext.methods.rose.rotation import apply_rotation, map_rotation


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient. The re-fused output's gradient
    reaches each part as a strided slice; Megatron's frozen-weight linear (S1: the LLM is frozen)
    computes grad_output.matmul(weight), which on a strided 3-D grad_output falls back to one
    matrix-vector product per token (measured: 4x slower layer backward at 7B shapes on CPU)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class RotatedLinear(nn.Module, ConditionedLayer):
    """A column- or row-parallel linear with per-sample input rotations, one per fused part.

    Built by Megatron with the usual linear arguments; the layer spec adds `base` (the backend's
    linear class), `parallel` ("column" or "row"), `layer_number` and `rotated` (the projections of
    this linear that are rotated). The rotations arrive built (R^T blocks, ROSEModel.conditioning_for):
    the layer only applies them, one batched GEMM per part.
    """

    def __init__(self, input_size: int, output_size: int, *, config, init_method, bias: bool,
                 skip_bias_add: bool, base: type, parallel: str, layer_number: int,
                 rotated: tuple, is_expert: bool = False,
                 tp_comm_buffer_name: Optional[str] = None, tp_group=None, gather_output: bool = False,
                 input_is_parallel: bool = True, **_megatron_kwargs):
        super().__init__()
        if gather_output:
            raise ValueError("RotatedLinear keeps Megatron's sharded output (gather_output=False)")
        self.config = config
        self.parallel = parallel
        self.layer_number = layer_number
        self.tp_group = tp_group if tp_group is not None else parallel_state.get_tensor_model_parallel_group()
        self.context: Optional[ConditioningContext] = None  # bound by the model

        parts = fused_parts(tp_comm_buffer_name, config)
        self.part_names = [p for p, _ in parts]
        self.rotated = tuple(p for p in self.part_names if p in rotated)
        kwargs = dict(config=config, init_method=init_method, bias=bias, skip_bias_add=skip_bias_add,
                      is_expert=is_expert, tp_comm_buffer_name=tp_comm_buffer_name, tp_group=tp_group)
        if parallel == "column":
            kwargs["gather_output"] = False
        else:
            kwargs["input_is_parallel"] = input_is_parallel
        self.parts = nn.ModuleDict({
            p: base(input_size, size if size is not None else output_size, **kwargs) for p, size in parts})
        self.groups = interleave_groups(tp_comm_buffer_name, config, self.tp_group.size())

    def _rotation(self, projection: str):
        """This part's R^T blocks, (batch, blocks, b, b), or its SolvedRotation (rotations_of); for a
        row-parallel part only this rank's
        blocks (the model builds no others: methods/rose/local_blocks.py)."""
        if self.context is None:
            raise RuntimeError(f"layer {self.layer_number}: RotatedLinear is not bound to a model's "
                               "ConditioningContext; build it through ROSEModel")
        Rt = self.context.get(self.layer_number, projection)
        if self.tp_group.size() > 1 and self.parallel == "column" and self.config.sequence_parallel:
            # each rank rotates only its sequence shard, so the rotation's gradient is partial per rank
            Rt = map_rotation(lambda t: copy_to_tensor_model_parallel_region(t, group=self.tp_group), Rt)
        return Rt

    def forward(self, x: torch.Tensor):
        outs, biases = [], []
        for name, linear in self.parts.items():
            xi = apply_rotation(x, self._rotation(name)) if name in self.rotated else x
            out, bias = linear(xi)
            outs.append(_ContiguousGrad.apply(out) if len(self.parts) > 1 else out)
            biases.append(bias)
        bias = None if biases[0] is None else fuse(biases, self.groups)
        return fuse(outs, self.groups), bias

    def backward_dw(self) -> None:
        for linear in self.parts.values():
            if hasattr(linear, "backward_dw"):
                linear.backward_dw()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        sd = {}
        for name, linear in self.parts.items():
            sd.update(linear.sharded_state_dict(f"{prefix}parts.{name}.", sharded_offsets, metadata))
        return sd
