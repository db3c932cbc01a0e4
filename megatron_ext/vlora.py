"""VLoRA (Ma et al., "Visual Perception by Large Language Model's Weights", section 3).

A perceptual weights generator turns an image's visual features into low-rank weights
Delta W = W_v W_s for each equipped (block, weight type); the LLM applies them as a LoRA branch per
sample, y = x W + (x W_v) W_s, never forming an h x h matrix in training.

Generator (paper 3.3): per weight type, k learnable perceptual queries (one per equipped block)
pass N decoder blocks (self-attention, cross-attention to the visual features, FFN) of width h_p;
a shared linear h_p -> in*r turns each query into W_v (in x r). W_s (r x out, zero-initialised, one
per block and type: the paper's "k independent linear layers") is the lora_B of the equipped linear,
so it is sharded with the base weight under TP. The five types' generators have identical shapes
and run as one batched computation (DESIGN.md rule 6).

What "mlp" means here: the paper writes the FFN as phi(x W_1) W_2 and generates Delta W in R^{h x h}
from W_v in R^{h x r}. We give "mlp" perceptual weights on W_1, which in Megatron is the fused
linear_fc1 = [gate | up] of the gated FFN: W_v (h x r, input h as in Eq. 4) is shared by gate and
up, W_s = [W_s_gate | W_s_up] is r x 2 ffn. It merges into W_1 exactly (Eq. 3), which is the
inference mode the paper claims. Not chosen: the authors' public code adds an h x h branch parallel
to the whole FFN (out += x W_v W_s), which cannot be merged into any existing weight; and a W_2
(down) branch would need W_v of ffn x r, a shared linear h_p -> ffn*r (ffn/h = 2.7x the paper's
size at Vicuna-7B), against the paper's h x r. (The paper's FLOP count, 24 k r h^2 in appendix A,
counts perceptual weights on both FFN matrices, which its h x h notation cannot express; "down"
gives that variant.)
The fine-grained types gate, up and down are available for ablations ("mlp" = gate + up, sharing W_v).

Pipeline parallelism: the generator's self-attention mixes the queries of all equipped blocks, so
every stage holds a replica of the whole generator and runs it once per micro-batch on the visual
features it receives (rule 7); each stage's replica only gets the gradient of its own blocks, and
`finalize_generator_grads` sums them over the pipeline group (as Megatron does for tied embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ext.fused_layout import LINEAR_OF
from megatron_ext.lora import low_rank_layers, lora_linear
from megatron_ext.model import InjectedGPTModel
from megatron_ext.specs import LINEARS, linear_classes, linear_owner, unfuse_te_norms

WEIGHT_TYPES = ("q", "k", "v", "o", "mlp", "gate", "up", "down")
_PARTS_OF_TYPE = {"mlp": ("gate", "up")}


class VLoRAConfigError(ValueError):
    """A VLoRA setting that cannot work with the model; the message says what to change."""


@dataclass
class VLoRAConfig:
    visual_dim: int
    layers: Optional[Sequence[int]] = None   # 1-based; None = every `every`-th block
    every: int = 4
    weight_types: Sequence[str] = ("q", "k", "v", "o", "mlp")
    rank: int = 64
    alpha: Optional[float] = None            # branch scale alpha / rank; None = 1 (the paper)
    generator_width: int = 512               # h_p
    generator_depth: int = 8                 # N
    generator_heads: int = 8
    generator_mlp_ratio: int = 4

    def equipped_layers(self, num_layers: int) -> list[int]:
        if self.layers is not None:
            return sorted(set(int(l) for l in self.layers))
        return [l for l in range(1, num_layers + 1) if l % self.every == 0]

    def parts(self) -> dict[str, str]:
        """Megatron projection part -> the weight type (generator) whose W_v it uses."""
        return {p: t for t in self.weight_types for p in _PARTS_OF_TYPE.get(t, (t,))}

    def input_dims(self, tcfg) -> dict[str, int]:
        attn = tcfg.num_attention_heads * tcfg.kv_channels
        dims = dict(q=tcfg.hidden_size, k=tcfg.hidden_size, v=tcfg.hidden_size, o=attn,
                    mlp=tcfg.hidden_size, gate=tcfg.hidden_size, up=tcfg.hidden_size,
                    down=tcfg.ffn_hidden_size)
        return {t: dims[t] for t in self.weight_types}

    def validate(self, tcfg) -> None:
        bad = [t for t in self.weight_types if t not in WEIGHT_TYPES]
        if bad or not self.weight_types:
            raise VLoRAConfigError(f"vlora.weight_types={list(self.weight_types)}: each must be one of "
                                   f"{list(WEIGHT_TYPES)}, at least one")
        parts = [p for t in self.weight_types for p in _PARTS_OF_TYPE.get(t, (t,))]
        if len(parts) != len(set(parts)):
            raise VLoRAConfigError(f"vlora.weight_types={list(self.weight_types)} names a projection twice "
                                   "('mlp' already covers gate and up)")
        if ("gate" in parts) and not tcfg.gated_linear_unit:
            raise VLoRAConfigError("'mlp'/'gate' need a gated FFN (gated_linear_unit=True); use 'up'")
        layers = self.equipped_layers(tcfg.num_layers)
        if not layers or any(not 1 <= l <= tcfg.num_layers for l in layers):
            raise VLoRAConfigError(f"vlora equips layers {layers}; they must be a non-empty subset of "
                                   f"1..{tcfg.num_layers} (set vlora.layers or vlora.every)")
        if self.rank < 1:
            raise VLoRAConfigError(f"vlora.rank={self.rank} must be positive")
        if self.generator_width % self.generator_heads:
            raise VLoRAConfigError(f"vlora.generator_width={self.generator_width} is not divisible by "
                                   f"vlora.generator_heads={self.generator_heads}")
        if tcfg.sequence_parallel:
            raise VLoRAConfigError("VLoRA does not support sequence_parallel yet; set it to False")


class GroupedLinear(nn.Module):
    """G independent linears of the same shape applied as one batched matmul: x (G, ..., in)."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x):
        shape = x.shape
        y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), self.weight.transpose(1, 2)) + self.bias[:, None]
        return y.reshape(*shape[:-1], -1)


class GroupedNorm(nn.Module):
    def __init__(self, groups: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))

    def forward(self, x):  # x: (G, B, L, w)
        return F.layer_norm(x, x.shape[-1:]) * self.weight[:, None, None] + self.bias[:, None, None]


class GeneratorBlock(nn.Module):
    """Pre-norm decoder block of G generators at once: self-attn, cross-attn to the image, FFN."""

    def __init__(self, groups: int, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = (GroupedNorm(groups, width) for _ in range(3))
        self.self_qkv = GroupedLinear(groups, width, 3 * width)
        self.self_out = GroupedLinear(groups, width, width)
        self.cross_q = GroupedLinear(groups, width, width)
        self.cross_kv = GroupedLinear(groups, width, 2 * width)
        self.cross_out = GroupedLinear(groups, width, width)
        self.fc1 = GroupedLinear(groups, width, mlp_ratio * width)
        self.fc2 = GroupedLinear(groups, mlp_ratio * width, width)

    def _attend(self, q, k, v):
        G, B = q.shape[:2]
        split = lambda t: t.reshape(G * B, t.shape[2], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(G, B, q.shape[2], -1)

    def forward(self, x, visual):  # x: (G, B, k, w); visual: (G, B, n, w)
        h = self.norm1(x)
        x = x + self.self_out(self._attend(*self.self_qkv(h).chunk(3, dim=-1)))
        h = self.norm2(x)
        x = x + self.cross_out(self._attend(self.cross_q(h), *self.cross_kv(visual).chunk(2, dim=-1)))
        return x + self.fc2(F.gelu(self.fc1(self.norm3(x))))


class PerceptualWeightsGenerator(nn.Module):
    """One generator per weight type, batched: visual features -> W_v for every (block, type).

    `layers` are all equipped blocks of the model (the queries); `local_layers` those of this
    pipeline stage, the only ones whose W_v is produced here.
    """

    def __init__(self, vcfg: VLoRAConfig, tcfg, layers: Sequence[int], local_layers: Sequence[int]):
        super().__init__()
        self.types = tuple(vcfg.weight_types)
        self.layers = list(layers)
        self.local = [self.layers.index(l) for l in local_layers]
        self.local_layers = list(local_layers)
        self.rank = vcfg.rank
        G, w = len(self.types), vcfg.generator_width
        self.input_dims = vcfg.input_dims(tcfg)
        self.visual_proj = nn.Linear(vcfg.visual_dim, w)
        self.queries = nn.Parameter(torch.randn(G, len(self.layers), w) * 0.02)
        self.blocks = nn.ModuleList(GeneratorBlock(G, w, vcfg.generator_heads, vcfg.generator_mlp_ratio)
                                    for _ in range(vcfg.generator_depth))
        self.norm = GroupedNorm(G, w)
        # the shared linear h_p -> in * r of each type (Eq. 4); input sizes differ between types
        self.to_W_v = nn.ModuleDict({t: nn.Linear(w, self.input_dims[t] * self.rank) for t in self.types})
        for head in self.to_W_v.values():
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def forward(self, visual: torch.Tensor) -> dict:
        """visual (batch, tokens, visual_dim) -> {(layer, type): W_v of (batch, in, rank)}."""
        visual = self.visual_proj(visual.to(self.visual_proj.weight.dtype))
        G, B = len(self.types), visual.shape[0]
        x = self.queries[:, None].expand(G, B, *self.queries.shape[1:])
        kv = visual[None].expand(G, *visual.shape)
        for block in self.blocks:
            x = block(x, kv)
        p_v = self.norm(x)[:, :, self.local]                          # (G, B, k_local, w)
        out = {}
        for g, t in enumerate(self.types):
            W_v = self.to_W_v[t](p_v[g]).unflatten(-1, (self.input_dims[t], self.rank))
            for i, layer in enumerate(self.local_layers):
                out[(layer, t)] = W_v[:, i]
        return out


class VLoRAModel(InjectedGPTModel):
    """A GPTModel whose equipped linears carry a per-image perceptual LoRA branch (VLoRA)."""

    def __init__(self, config, vlora: VLoRAConfig, vocab_size: int, max_sequence_length: int, **kwargs):
        vlora.validate(config)
        self.vlora = vlora
        self.all_equipped = vlora.equipped_layers(config.num_layers)
        super().__init__(config, self.all_equipped, vocab_size, max_sequence_length, **kwargs)
        if self.generator is None:  # a stage without equipped blocks still holds the replica that
            self.generator = self.make_generator()  # finalize_generator_grads reduces over

    def make_generator(self) -> PerceptualWeightsGenerator:
        return PerceptualWeightsGenerator(self.vlora, self.config, self.all_equipped, self.equipped)

    def equip(self, layer_number: int, spec):
        classes = linear_classes(self.backend)
        parts = self.vlora.parts()
        swapped = []
        for linear, (_, parallel) in LINEARS.items():
            if not any(f"linear_{LINEAR_OF[p]}" == linear for p in parts):
                continue
            setattr(linear_owner(spec, linear), linear, ModuleSpec(
                module=lora_linear(classes[parallel], "vlora"), params=dict(
                    parallel=parallel, layer_number=layer_number, rank=self.vlora.rank,
                    alpha=self.vlora.alpha, adapted=tuple(parts))))
            swapped.append(linear)
        if self.backend == "te":
            unfuse_te_norms(spec, swapped)
        return spec

    def conditioning_for(self, visual_features: torch.Tensor) -> dict:
        """{(layer, part): W_v} for every VLoRA part of this stage (gate and up share mlp's W_v)."""
        if not self.equipped:
            return {}
        W_v = self.generator(visual_features)
        return {(l, p): W_v[(l, t)] for l in self.equipped for p, t in self.vlora.parts().items()}

    # -- inference: merge one image's perceptual weights (paper Eq. 3) ---------------------------
    @torch.no_grad()
    def merge_image(self, visual_features: torch.Tensor) -> None:
        """W <- W + W_v(image) W_s in every equipped linear, for one image (batch of 1)."""
        if visual_features.shape[0] != 1:
            raise ValueError("merge_image takes the features of one image: shape (1, tokens, dim)")
        conditioning = self.conditioning_for(visual_features)
        for layer in low_rank_layers(self.language_model, "vlora"):
            A = torch.cat([conditioning[(layer.layer_number, p)][0] for p in layer.adapted], dim=-1)
            layer.merge(layer.local_rows(A))

    @torch.no_grad()
    def unmerge_image(self) -> None:
        for layer in low_rank_layers(self.language_model, "vlora"):
            layer.unmerge()

    def forward(self, input_ids, position_ids, attention_mask, visual_features=None, labels=None, **kwargs):
        if any(l.merged for l in low_rank_layers(self.language_model, "vlora")):
            # merged weights already hold the image: run the plain decoder
            return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)
        return super().forward(input_ids, position_ids, attention_mask, visual_features, labels, **kwargs)

    # -- pipeline parallelism ----------------------------------------------------------------
    def finalize_generator_grads(self) -> None:
        """Sum the generator replicas' gradients over the pipeline group (call after the backward
        of all micro-batches, before the optimizer step; a no-op without pipeline parallelism)."""
        from megatron.core import parallel_state

        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return
        group = parallel_state.get_pipeline_model_parallel_group()
        for p in self.generator.parameters():
            # under Megatron's DDP wrapper gradients accumulate in main_grad, not grad
            grad = getattr(p, "main_grad", None)
            if grad is None:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grad = p.grad
            torch.distributed.all_reduce(grad, group=group)

    def generator_parameters(self):
        return list(self.generator.parameters()) + [
            p for l in low_rank_layers(self.language_model, "vlora") for p in l.lora_B.values()]


def build_vlora(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
                config_overrides: dict | None = None, freeze_llm: bool = True,
                **vlora_overrides) -> VLoRAModel:
    """A VLoRAModel for this process's TP/PP rank from a preset (presets.py). freeze_llm: the
    paper's pre-training (only the generator and W_s train); False for its fine-tuning stage."""
    from megatron.core import parallel_state

    from megatron_ext.llm_config import qwen2_transformer_config
    from megatron_ext.presets import vlora_config

    llm = preset["llm"]
    overrides = dict(preset.get("transformer", {}))
    overrides.update(config_overrides or {})
    config = qwen2_transformer_config(
        llm, parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(), dtype, **overrides)
    model = VLoRAModel(config, vlora_config(preset, **vlora_overrides), llm["vocab_size"],
                       llm["max_position_embeddings"], backend=backend,
                       rotary_base=llm.get("rope_theta", 1000000.0))
    if freeze_llm:
        trainable = {id(p) for p in model.generator_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    return model
