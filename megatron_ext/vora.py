"""VoRA (Wang et al., "Vision as LoRA", section 3) on Megatron-Core.

- Vision embedding: raw pixels -> p x p patches -> linear + RMSNorm + learned positional embedding
  (bilinearly interpolated to any patch grid) -> linear to the LLM width. Its tokens replace the
  image positions of the text embedding and enter GPTModel as `decoder_input`.
- LoRA (lora.py, rank up to 1024) on every linear (q, k, v, o, gate, up, down: one adapter per part)
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
  blocks' targets, sent to later stages that hold distilled blocks (feature_exchange.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ext.context import ConditionedLayer
from megatron_ext.lora import low_rank_layers, lora_linear
from megatron_ext.model import InjectedGPTModel, train_only
from megatron_ext.specs import LINEARS, linear_classes, linear_owner, unfuse_te_norms
from megatron_ext.vora_embedding import VisionEmbedding


class VoRAConfigError(ValueError):
    """A VoRA setting that cannot work with the model; the message says what to change."""


@dataclass
class VoRAConfig:
    teacher_dim: int                          # width of the ViT teacher's block features
    vit_layers: int = 24                      # N_vit: LoRA on blocks 1..N_vit
    rank: int = 1024
    alpha: Optional[float] = None             # LoRA scale alpha / rank; None = 1
    distill_layers: Optional[Sequence[int]] = None  # None = 1..N_vit (block-wise); [N_vit] = last-block
    patch_size: int = 14
    image_size: int = 448                     # the positional embedding's native grid
    embed_width: int = 1536
    in_channels: int = 3
    bidirectional: bool = True                # False: causal image attention (the paper's ablation)

    def distilled(self) -> list[int]:
        return sorted(self.distill_layers) if self.distill_layers is not None \
            else list(range(1, self.vit_layers + 1))

    def validate(self, tcfg) -> None:
        if not 1 <= self.vit_layers <= tcfg.num_layers:
            raise VoRAConfigError(f"vora.vit_layers={self.vit_layers} must be in 1..{tcfg.num_layers}")
        bad = [l for l in self.distilled() if not 1 <= l <= tcfg.num_layers]
        if bad:
            raise VoRAConfigError(f"vora.distill_layers contains {bad}: layers are numbered 1..{tcfg.num_layers}")
        if self.image_size % self.patch_size:
            raise VoRAConfigError(f"vora.image_size={self.image_size} is not a multiple of "
                                  f"vora.patch_size={self.patch_size}")
        if self.rank < 1:
            raise VoRAConfigError(f"vora.rank={self.rank} must be positive")
        if tcfg.sequence_parallel:
            raise VoRAConfigError("VoRA does not support sequence_parallel yet; set it to False")


class AuxHead(nn.Module):
    def __init__(self, hidden_size: int, teacher_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.proj = nn.Linear(hidden_size, teacher_dim)

    def forward(self, h):
        return self.proj(self.norm(h))


class _AddLossGradient(torch.autograd.Function):
    """Identity on the activations; the backward also starts the aux loss's backward (scaled)."""

    @staticmethod
    def forward(ctx, output, loss, scale: float):
        ctx.save_for_backward(loss)
        ctx.scale = scale
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        (loss,) = ctx.saved_tensors
        return grad, torch.full_like(loss, ctx.scale), None


@dataclass
class DistillTarget:
    """What a distilled block needs for one micro-batch."""
    batch_index: torch.Tensor     # (n_image_tokens,) positions of the image tokens, image-major
    seq_index: torch.Tensor
    teacher: torch.Tensor         # (n_image_tokens, teacher_dim), same order
    weight: float                 # 1 / number of distilled blocks
    scale: float                  # gradient scale (distill_loss_scale)
    sink: dict                    # layer -> loss (for logging)


class DistilledTransformerLayer(TransformerLayer, ConditionedLayer):
    """Megatron's TransformerLayer plus an AuxHead whose distillation loss is added at this block."""

    def __init__(self, config, submodules, layer_number: int = 1, *, teacher_dim: int, **kwargs):
        super().__init__(config, submodules, layer_number=layer_number, **kwargs)
        self.aux_head = AuxHead(config.hidden_size, teacher_dim, eps=config.layernorm_epsilon)

    def forward(self, *args, **kwargs):
        output, context = super().forward(*args, **kwargs)
        target = self.context.get_optional(self.layer_number, "distill") if self.context is not None else None
        if target is not None:
            h = output.transpose(0, 1)[target.batch_index, target.seq_index]  # output: (s, b, h)
            pred = self.aux_head(h).float()
            loss = (1 - F.cosine_similarity(pred, target.teacher.float(), dim=-1)).mean() * target.weight
            target.sink[self.layer_number] = loss
            if target.scale:
                output = _AddLossGradient.apply(output, loss, target.scale)
        return output, context


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

    def __init__(self, config, vora: VoRAConfig, vocab_size: int, max_sequence_length: int,
                 merged: bool = False, **kwargs):
        vora.validate(config)
        self.vora = vora
        self.merged = merged  # fine-tuning: no LoRA, no aux heads (the LoRA is in the base weights)
        # every layer is "equipped": all need the arbitrary-mask attention; LoRA/aux heads where set
        super().__init__(config, list(range(1, config.num_layers + 1)), vocab_size,
                         max_sequence_length, **kwargs)
        self.vision_embedding = VisionEmbedding(vora, config.hidden_size, config.layernorm_epsilon) \
            if self.pre_process else None
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
            classes = linear_classes(self.backend)
            for linear, (_, parallel) in LINEARS.items():
                setattr(linear_owner(spec, linear), linear, ModuleSpec(
                    module=lora_linear(classes[parallel], "lora"), params=dict(
                        parallel=parallel, layer_number=layer_number, rank=self.vora.rank,
                        alpha=self.vora.alpha)))
            if self.backend == "te":
                unfuse_te_norms(spec, list(LINEARS))
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
        with self.conditioning.use(values):
            return self.language_model(input_ids, position_ids, attention_mask,
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
        for layer in low_rank_layers(self.language_model, "lora"):
            layer.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        for layer in low_rank_layers(self.language_model, "lora"):
            layer.unmerge()

    @torch.no_grad()
    def merge_and_unload(self) -> None:
        """Fold every LoRA into its base weight and drop the adapters and aux heads: what remains
        is a plain GPTModel (same state-dict keys) and the vision embedding (paper, Fig. 2b)."""
        for layer in low_rank_layers(self.language_model, "lora"):
            layer.unload()
        for layer in self.language_model.decoder.layers:
            if isinstance(layer, DistilledTransformerLayer):
                del layer.aux_head
                layer.__class__ = TransformerLayer
        self.merged = True


def build_vora(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None, freeze_llm: bool = True, merged: bool = False,
               **vora_overrides) -> VoRAModel:
    """A VoRAModel for this process's TP/PP rank from a preset (presets.py); in pre-training
    (freeze_llm) only LoRA, the vision embedding and the aux heads train. merged=True: the
    fine-tuning model (no LoRA, no aux heads)."""
    from megatron_ext.llm_config import gpt_model_kwargs, preset_transformer_config
    from megatron_ext.presets import vora_config

    llm = preset["llm"]
    config = preset_transformer_config(preset, dtype, config_overrides)
    model = VoRAModel(config, vora_config(preset, **vora_overrides), backend=backend, merged=merged,
                      **gpt_model_kwargs(llm))
    if freeze_llm and not merged:
        train_only(model, model.trainable_parameters())
    return model


# -- training on images ------------------------------------------------------------------------
def teacher_check(path, vora: VoRAConfig, image_size: int):
    """The teacher's HF config, checked against the student before any weights are read (every
    rank runs it, so a mismatch fails everywhere at start-up, not as a hang)."""
    import transformers

    from pathlib import Path

    if not (Path(path) / "config.json").is_file():
        raise VoRAConfigError(f"teacher directory {path} has no config.json")
    config = transformers.AutoConfig.from_pretrained(path)
    vc = getattr(config, "vision_config", config)
    deepest = max(vora.distilled())
    if vc.num_hidden_layers < deepest:
        raise VoRAConfigError(f"the teacher has {vc.num_hidden_layers} blocks but block {deepest} is "
                              f"distilled (LLM block i learns from teacher block i): lower vora.vit_layers")
    if vc.hidden_size != vora.teacher_dim:
        raise VoRAConfigError(f"the teacher's width is {vc.hidden_size} but the aux heads project to "
                              f"{vora.teacher_dim}: set the preset's vision.hidden_size to {vc.hidden_size}")
    teacher_grid, ours = image_size // vc.patch_size, image_size // vora.patch_size
    if getattr(vc, "image_size", image_size) != image_size or teacher_grid != ours:
        raise VoRAConfigError(
            f"at data.image_size={image_size} the student has {ours}x{ours} patches of {vora.patch_size} px "
            f"but the teacher (image_size {getattr(vc, 'image_size', '?')}, patch {vc.patch_size}) has "
            f"{teacher_grid}x{teacher_grid}: distillation pairs them token by token; set data.image_size "
            f"to the teacher's and vora.patch_size to its patch size")
    return vc


class VoRATeacher(nn.Module):
    """A frozen ViT: block i's hidden states are the targets of LLM block i. Never trained (runs
    under no_grad). The loader normalises pixels for the student (mean = std = 0.5); the teacher
    gets them re-normalised to its own image processor's statistics when its directory has one."""

    def __init__(self, tower, layers: list[int], mean=None, std=None):
        super().__init__()
        from megatron_ext.data.shards import MEAN, STD

        tower.set_trainable(False)
        self.tower, self.layers = tower, list(layers)
        mean = torch.tensor(mean if mean is not None else MEAN).view(1, -1, 1, 1)
        std = torch.tensor(std if std is not None else STD).view(1, -1, 1, 1)
        # x_teacher = (x * STD + MEAN - mean) / std, as one multiply-add
        self.register_buffer("scale", torch.tensor(STD).view(1, -1, 1, 1) / std, persistent=False)
        self.register_buffer("shift", (torch.tensor(MEAN).view(1, -1, 1, 1) - mean) / std, persistent=False)

    @classmethod
    def from_pretrained(cls, path, vora: VoRAConfig, image_size: int, dtype=torch.float32) -> "VoRATeacher":
        from megatron_ext.data.shards import tower_pixel_stats
        from megatron_ext.vision_tower import VisionTower

        teacher_check(path, vora, image_size)
        layers = vora.distilled()
        tower = VisionTower.from_pretrained(path, feature_layer=max(layers), dtype=dtype)
        teacher = cls(tower, layers, *tower_pixel_stats(path))
        return teacher.to(torch.cuda.current_device()) if torch.cuda.is_available() else teacher

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> dict:
        """{block: (images * tokens, width)} in image-major order (the student's token order)."""
        x = pixel_values.float() * self.scale + self.shift
        x = x.to(next(self.tower.parameters()).dtype)  # bf16 teacher on GPU, fp32 loader pixels
        feats = self.tower.features(x, self.layers)
        return {l: f.flatten(0, 1) for l, f in zip(self.layers, feats)}


class VoRAVisionModel(MegatronModule):
    """VoRA on image-text batches: each sample's image tokens (marked by `image_mask`) are its
    image's patches, embedded by the model; with `distill`, the teacher on the first pipeline
    stage gives every distilled block its targets (later stages receive theirs, DESIGN.md rule 7).

    The teacher is in its own parameter group ("teacher"), in no stage's trainable set, and not in
    checkpoints (it is read from its directory); LLM keys equal a bare VoRAModel's."""

    def __init__(self, lm: VoRAModel, teacher: Optional[VoRATeacher], distill: bool):
        super().__init__(lm.config)
        from megatron.core import parallel_state

        from megatron_ext import feature_exchange
        from megatron_ext.specs import stage_layers

        self.lm = lm
        self.model_type = lm.model_type
        self.stage = parallel_state.get_pipeline_model_parallel_rank()
        if distill and (self.stage == 0) != (teacher is not None):
            raise ValueError("the teacher belongs on the first pipeline stage, and only there")
        self.teacher, self.distill = teacher, distill
        distilled = lm.vora.distilled() if distill else []
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        layers = {r: [l for l in distilled if l in stage_layers(lm.config, pp_rank=r)] for r in range(pp)}
        self.consumers = {r: ls for r, ls in layers.items() if r > 0 and ls}
        if self.consumers:  # collective: at construction, never inside the schedule
            feature_exchange.feature_group()
        self.distill_record: list = []

    def set_input_tensor(self, input_tensor) -> None:
        self.lm.set_input_tensor(input_tensor)

    def teacher_features(self, pixel_values) -> Optional[dict]:
        """This stage's distillation targets for the micro-batch ({} or None where it has none)."""
        from megatron_ext import feature_exchange

        if not self.distill:
            return None
        if self.teacher is not None:
            feats = self.teacher(pixel_values)
            for stage, layers in self.consumers.items():  # each stage gets only its blocks
                stacked = torch.stack([feats[l] for l in layers]).to(self.config.params_dtype)
                feature_exchange.send_features(stacked, [stage])
            return feats
        if self.stage in self.consumers:
            device = torch.cuda.current_device() if torch.cuda.is_available() else torch.device("cpu")
            stacked = feature_exchange.recv_features(self.config.params_dtype, device, with_grad=False)
            return dict(zip(self.consumers[self.stage], stacked))
        return {}

    def forward(self, input_ids, position_ids, attention_mask, pixel_values=None, image_mask=None,
                labels=None, **kwargs):
        if image_mask is None:
            raise ValueError("VoRA batches mark their image tokens (image_mask): build them with the "
                             "data loader's image_tokens (megatron_ext/data/loader.py)")
        # one image per sample: sample b's image is images[b]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        image_ids = torch.where(image_mask, rows, -1)
        images = list(pixel_values) if self.lm.pre_process else None
        feats = self.teacher_features(pixel_values)
        out = self.lm(input_ids, position_ids, attention_mask, images=images, image_ids=image_ids,
                      teacher_features=feats, labels=labels, **kwargs)
        if feats is not None:
            loss = self.lm.distill_loss()  # kept as a tensor: no device sync per micro-batch
            self.distill_record.append(loss.detach() if loss is not None else torch.zeros(()))
        return out

    # -- per optimizer step (training/step.py) -------------------------------------------------
    def begin_step(self, distill_loss_scale: float) -> None:
        """distill_loss_scale: what the schedule multiplies the LM loss of a micro-batch by
        (loss scale / num_microbatches), so that each block's distillation gradient is that of
        (1 / num_microbatches) * sum over micro-batches of (L_LM + L_distill)."""
        self.lm.distill_loss_scale = distill_loss_scale
        self.distill_record = []

    def stage_distill_loss(self) -> float:
        """This stage's share of the step's distillation loss, averaged over its micro-batches."""
        if not self.distill_record:
            return 0.0
        return float(sum(r.float().cpu() for r in self.distill_record)) / len(self.distill_record)

    # -- groups and checkpoints ----------------------------------------------------------------
    def parameter_groups(self) -> dict:
        from megatron_ext.training.stages import parameter_groups

        groups = {g: [p for _, p in ps] for g, ps in parameter_groups(self.lm).items()}
        groups["teacher"] = list(self.teacher.parameters()) if self.teacher is not None else []
        return groups

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        return self.lm.sharded_state_dict(f"{prefix}lm.", sharded_offsets, metadata)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("teacher.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"VoRAVisionModel.load_state_dict: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
        return result._replace(missing_keys=missing)


def checkpoint_has_lora(path) -> bool:
    from megatron.core import dist_checkpointing

    return any(".lora_" in k for k in dist_checkpointing.load_tensors_metadata(str(path)))


def load_merged(path, model, build_unmerged) -> dict:
    """Fine-tuning from pre-training: the checkpoint's weights (LoRA unmerged, aux heads) go into
    an unmerged model of this rank's layout, the LoRA is folded into the base weights there (each
    TP rank folds its own shards), and the result fills the merged `model` (strictly: every
    tensor accounted for). The aux heads are dropped, as in the paper."""
    from megatron_ext.training.checkpoint import load_weights

    src = build_unmerged()
    info = load_weights(path, src)
    if info["kept_at_init"]:
        raise RuntimeError(f"{path} lacks {info['kept_at_init'][:3]}... of the pre-training model")
    getattr(src, "lm", src).merge_and_unload()
    model.load_state_dict(src.state_dict(), strict=True)
    return info
