"""InjectedGPTModel, what every method's model shares: a Megatron GPTModel built from a decoder
block spec in which some layers' submodules are swapped, a generator that turns visual features
into per-micro-batch conditioning, and a ConditioningContext through which the swapped layers read
it. The methods (megatron_ext/methods/) subclass it.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ext.core.context import ConditionedLayer, ConditioningContext
from megatron_ext.core.loss_positions import LossPositionsGPTModel
from megatron_ext.core.specs import decoder_block_spec, resolve_backend, stage_layers


class InjectedGPTModel(MegatronModule):
    """GPTModel + a conditioning generator for the equipped layers held by this pipeline stage.

    Under pipeline parallelism every stage holds the generator of its own equipped layers and
    receives the visual features with each micro-batch (docs/ARCHITECTURE.md, rule 7); text activations flow
    between stages as usual through set_input_tensor. Subclasses provide `equip` (the layer-spec
    swap) and `make_generator`.
    """

    def __init__(self, config, equipped_layers: list[int], vocab_size: int,
                 max_sequence_length: int, backend: str = "auto", pre_process: bool | None = None,
                 post_process: bool | None = None, rotary_base: float = 1000000.0,
                 share_embeddings_and_output_weights: bool = False, **rope_kwargs):
        super().__init__(config)
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.pre_process = parallel_state.is_pipeline_first_stage() if pre_process is None else pre_process
        self.post_process = parallel_state.is_pipeline_last_stage() if post_process is None else post_process
        self.backend = resolve_backend(backend)
        here = set(stage_layers(config))
        self.all_equipped = sorted(equipped_layers)  # every stage's, for the feature exchange
        self.equipped = [l for l in self.all_equipped if l in here]
        spec = decoder_block_spec(config, self.backend, self.equip, set(self.equipped))
        self.language_model = LossPositionsGPTModel(
            config, spec, vocab_size, max_sequence_length, pre_process=self.pre_process,
            post_process=self.post_process, position_embedding_type="rope", rotary_base=rotary_base,
            share_embeddings_and_output_weights=share_embeddings_and_output_weights,
            **rope_kwargs)  # RoPE scaling (core/llm_config.megatron_rope_kwargs)
        self.generator = self.make_generator() if self.equipped else None
        self.conditioning = ConditioningContext()
        for module in self.language_model.modules():
            if isinstance(module, ConditionedLayer):
                module.context = self.conditioning
        for layer in self.language_model.decoder.layers:  # full recompute: values carried per layer
            if any(isinstance(m, ConditionedLayer) for m in layer.modules()):
                layer.register_forward_pre_hook(self.conditioning.bind, with_kwargs=True)
                layer.register_forward_hook(self.conditioning.unbind, always_call=True)

    def equip(self, layer_number: int, spec: ModuleSpec) -> ModuleSpec:
        raise NotImplementedError

    def make_generator(self) -> torch.nn.Module:
        raise NotImplementedError

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def conditioning_for(self, visual_features: torch.Tensor) -> dict:
        """{(layer, projection): conditioning} for every equipped projection of this stage."""
        return self.generator(visual_features) if self.generator is not None else {}

    def forward(self, input_ids, position_ids, attention_mask, visual_features, labels=None, **kwargs):
        return self.run_decoder(self.conditioning_for(visual_features), input_ids, position_ids,
                                attention_mask, labels=labels, **kwargs)

    def run_decoder(self, values: dict, *args, **kwargs):
        """The GPTModel's forward with `values` as this micro-batch's conditioning. Under full
        activation recompute the layers rerun their forward in the backward, after this returns:
        the values then travel with the layers' inputs (ConditioningContext, carry)."""
        recompute = self.config.recompute_granularity == "full" and self.training and torch.is_grad_enabled()
        with self.conditioning.use(values, carry=recompute and bool(values)) as block_kwargs:
            if block_kwargs:
                kwargs["extra_block_kwargs"] = {**(kwargs.get("extra_block_kwargs") or {}), **block_kwargs}
            return self.language_model(*args, **kwargs)

    # -- what the training loop asks of every model (train.py, training/*) ----------------------
    @property
    def injected(self) -> "InjectedGPTModel":
        """The InjectedGPTModel itself (a wrapper around one answers with its own)."""
        return self

    def generator_parameters(self) -> list:
        """The parameters of the "generator" group (VLoRA adds its W_s, which live in the LLM's linears)."""
        return list(self.generator.parameters()) if self.generator is not None else []

    def pipeline_replicated_parameters(self) -> list:
        """Parameters every pipeline stage holds a replica of, each stage's gradient partial (VLoRA's
        generator); training/grads.py sums their gradients over the pipeline group."""
        return []

    def begin_step(self, aux_loss_scale: float) -> None:
        """Called before each optimizer step's micro-batches with the factor the schedule applies to
        the LM loss, for losses whose gradient is injected where they are computed (VoRA)."""

    def stage_aux_loss(self) -> float | None:
        """This stage's share of the step's auxiliary loss (None: the method has none)."""
        return None

    def step_metrics(self) -> dict:
        """Method-specific numbers for metrics.jsonl, measured on this rank's last micro-batch
        (ROSE: the size of its rotations); {} where the method logs none."""
        return {}


def train_only(model: torch.nn.Module, params) -> None:
    """requires_grad on exactly `params` (a method's pre-training set), off everywhere else."""
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
