"""VoRA (Wang et al., "Vision as LoRA", section 3) on Megatron-Core.

- Vision embedding: raw pixels -> p x p patches -> linear + RMSNorm + learned positional embedding
  (bilinearly interpolated to any patch grid) -> linear to the LLM width. Its tokens replace the
  image positions of the text embedding and enter GPTModel as `decoder_input`.
- LoRA (lora.py on core/low_rank.py, rank up to 1024) on every linear (q, k, v, o, gate, up, down: one adapter per part)
  of the first N_vit blocks; in pre-training only LoRA, the embedding and the aux heads train.
- Attention: bidirectional among the tokens of one image, causal everywhere else (an arbitrary mask:
  Megatron's local attention on CPU, TE's arbitrary-mask attention on GPU).
- Block-wise distillation: block i's hidden states at image positions -> AuxHead (RMSNorm + linear)
  -> 1 - cos against block i of a frozen ViT teacher, averaged over positions and blocks; the total
  loss is distillation + LM. The distilled blocks may sit on any pipeline stage, so each block adds
  its loss's gradient where it is computed (like Megatron's MoE aux losses) instead of shipping the
  loss to the last stage: backward of the LM loss alone trains on the total. `distill_losses` holds
  the per-block values for logging; `distill_loss_scale` must match the LM loss's micro-batch
  averaging (Megatron's schedule divides by num_microbatches: set 1 / num_microbatches).
- Merge: LoRA folded into the base weights, aux heads dropped: a plain GPTModel + the embedding.
  Fine-tuning (S2) builds that merged model directly (`merged=True`); `load_merged` folds an S1
  checkpoint's LoRA into it.
- Training on images (`VoRAVisionModel`): each sample's image tokens precede its text (the data
  layer's `image_mask`); a frozen ViT teacher on the first pipeline stage gives the distilled
  blocks' targets, sent to later stages that hold distilled blocks (core/feature_exchange.py).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ext.core.injected import InjectedGPTModel, train_only
from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config
from megatron_ext.core.low_rank import low_rank_layers, lora_linear
from megatron_ext.core.specs import swap_linears
from megatron_ext.methods.vora.config import VoRAConfig, vora_config
from megatron_ext.methods.vora.distill import DistilledTransformerLayer, DistillTarget
from megatron_ext.methods.vora.lora import LoRAMixin
from megatron_ext.methods.vora.vora_embedding import VisionEmbedding


def vora_attention_mask(image_ids: torch.Tensor, bidirectional: bool = True) -> torch.Tensor:
    """image_ids (batch, seq): -1 for text, else the image a token belongs to. Returns Megatron's
    (batch, 1, seq, seq) boolean mask, True = masked: causal, plus every token of an image sees all
    tokens of the same image."""
    s = image_ids.shape[1]
    allowed = torch.ones(s, s, dtype=torch.bool, device=image_ids.device).tril()[None]
    if bidirectional:
        same = (image_ids[:, :, None] == image_ids[:, None, :]) & (image_ids[:, :, None] >= 0)
        allowed = allowed | same
    return ~allowed[:, None]


class VoRAModel(InjectedGPTModel):
    """A GPTModel with VoRA's vision LoRA, image embedding, image attention mask and distillation."""

    method = "vora"  # its MethodSpec in the registry

    def __init__(self, config, vora: VoRAConfig, vocab_size: int, max_sequence_length: int,
                 merged: bool = False, **kwargs):
        vora.validate(config)
        self.vora = vora
        self.merged = merged  # fine-tuning: no LoRA, no aux heads (the LoRA is in the base weights)
        # every layer is "equipped": all need the arbitrary-mask attention; LoRA/aux heads where set
        super().__init__(config, list(range(1, config.num_layers + 1)), vocab_size,
                         max_sequence_length, **kwargs)
        self.vision_embedding = VisionEmbedding(**vora.embedding(), hidden_size=config.hidden_size,
                                                eps=config.layernorm_epsilon) if self.pre_process else None
        self.distill_loss_scale = 1.0
        self.distill_losses: dict = {}

    def make_generator(self):
        return None  # VoRA's conditioning is the teacher's features, given as input

    def equip(self, layer_number: int, spec: ModuleSpec) -> ModuleSpec:
        attention = spec.submodules.self_attention
        attention.params = dict(attention.params, attn_mask_type=AttnMaskType.arbitrary)
        if self.merged:
            return spec
        if layer_number <= self.vora.vit_layers:
            swap_linears(spec, self.backend, lambda attribute, parallel, base: ModuleSpec(
                module=lora_linear(base, LoRAMixin), params=dict(
                    parallel=parallel, layer_number=layer_number, rank=self.vora.rank,
                    alpha=self.vora.alpha)))
        if layer_number in self.vora.distilled():
            spec.module = DistilledTransformerLayer
            spec.params = dict(spec.params, teacher_dim=self.vora.teacher_dim)
        return spec

    # -- inputs --------------------------------------------------------------------------------
    @staticmethod
    def image_positions(image_ids: torch.Tensor):
        """(batch_index, seq_index) of every image token, image-major (image 0's tokens in order,
        then image 1's, ...): the order of the embedding's and the teacher's tokens."""
        b, s = torch.nonzero(image_ids >= 0, as_tuple=True)
        order = torch.argsort(image_ids[b, s], stable=True)
        return b[order], s[order]

    def embed(self, input_ids, position_ids, images, image_ids):
        """Text embedding with each image's tokens in its positions: (seq, batch, hidden)."""
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)
        if images is None or len(images) == 0:
            return emb
        tokens = torch.cat([self.vision_embedding(img) for img in images]).to(emb.dtype)
        b, s = self.image_positions(image_ids)
        if tokens.shape[0] != b.numel():
            raise ValueError(f"the images give {tokens.shape[0]} tokens but image_ids marks {b.numel()} "
                             "positions: each image needs (H/p)*(W/p) positions")
        return emb.transpose(0, 1).index_put((b, s), tokens).transpose(0, 1)

    def forward(self, input_ids, position_ids, attention_mask=None, images=None, image_ids=None,
                teacher_features=None, labels=None, **kwargs):
        """images: a list of (C, H, W) pixel tensors (any resolution), numbered by image_ids
        (batch, seq): -1 for text, j for the tokens of images[j]. teacher_features: one
        (n_image_tokens, teacher_dim) tensor per distilled block (image-major order), as a list
        over all distilled blocks or a dict {block: tensor} covering this stage's; or None."""
        if image_ids is None:
            image_ids = torch.full_like(input_ids, -1)
        if attention_mask is None:  # arbitrary-mask attention never assumes causality by itself
            attention_mask = vora_attention_mask(image_ids, self.vora.bidirectional)
        self.distill_losses = {}
        values = {}
        if teacher_features is not None:
            if self.merged:
                raise ValueError("a merged VoRA model has no aux heads: nothing to distil")
            distilled = self.vora.distilled()
            if not isinstance(teacher_features, dict):
                if len(teacher_features) != len(distilled):
                    raise ValueError(f"{len(teacher_features)} teacher feature tensors for "
                                     f"{len(distilled)} distilled blocks {distilled}")
                teacher_features = dict(zip(distilled, teacher_features))
            here = [l for l in distilled if l in self.equipped]
            if set(here) - set(teacher_features):
                raise ValueError(f"teacher features for blocks {sorted(teacher_features)}, but this stage "
                                 f"distils blocks {here}")
            b, s = self.image_positions(image_ids)
            for layer in here:
                values[(layer, "distill")] = DistillTarget(b, s, teacher_features[layer], 1 / len(distilled),
                                                           self.distill_loss_scale, self.distill_losses)
        decoder_input = self.embed(input_ids, position_ids, images, image_ids) if self.pre_process else None
        return self.run_decoder(values, input_ids, position_ids, attention_mask,
                                decoder_input=decoder_input, labels=labels, **kwargs)

    def distill_loss(self) -> torch.Tensor | None:
        """This stage's share of the distillation loss of the last forward (sum over its blocks)."""
        return sum(self.distill_losses.values()) if self.distill_losses else None

    # -- training and merging ------------------------------------------------------------------
    def trainable_parameters(self):
        return [p for n, p in self.named_parameters()
                if ".lora_" in n or n.startswith("vision_embedding.") or ".aux_head." in n]

    @torch.no_grad()
    def merge(self) -> None:
        for layer in low_rank_layers(self.language_model, LoRAMixin):
            layer.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        for layer in low_rank_layers(self.language_model, LoRAMixin):
            layer.unmerge()

    @torch.no_grad()
    def merge_and_unload(self) -> None:
        """Fold every LoRA into its base weight and drop the adapters and aux heads: what remains
        is a plain GPTModel (same state-dict keys) and the vision embedding (paper, Fig. 2b)."""
        for layer in low_rank_layers(self.language_model, LoRAMixin):
            layer.unload()
        for layer in self.language_model.decoder.layers:
            if isinstance(layer, DistilledTransformerLayer):
                del layer.aux_head
                layer.__class__ = TransformerLayer
        self.merged = True


def build_vora(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None, freeze_llm: bool = True, merged: bool = False,
               **vora_overrides) -> VoRAModel:
    """A VoRAModel for this process's TP/PP rank from a preset (configs/model); in pre-training
    (freeze_llm) only LoRA, the vision embedding and the aux heads train. merged=True: the
    fine-tuning model (no LoRA, no aux heads)."""
    llm = preset["llm"]
    config = preset_transformer_config(preset, dtype, config_overrides)
    model = VoRAModel(config, vora_config(preset, **vora_overrides), backend=backend, merged=merged,
                      **gpt_model_kwargs(llm))
    if freeze_llm and not merged:
        train_only(model, model.trainable_parameters())
    return model
