"""VoRA on image-text batches: the model the training loop runs."""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state

from megatron_ext.core import feature_exchange
from megatron_ext.core.param_groups import parameter_groups
from megatron_ext.core.specs import stage_layers
from megatron_ext.core.wrapper import LLMWrapper
from megatron_ext.methods.vora.model import VoRAModel
from megatron_ext.methods.vora.teacher import VoRATeacher


class VoRAVisionModel(LLMWrapper):
    """VoRA on image-text batches: each sample's image tokens (marked by `image_mask`) are its
    image's patches, embedded by the model; with `distill`, the teacher on the first pipeline
    stage gives every distilled block its targets (later stages receive theirs, docs/ARCHITECTURE.md rule 7).

    The teacher is in its own parameter group ("teacher"), in no stage's trainable set, and not in
    checkpoints (it is read from its directory); LLM keys equal a bare VoRAModel's."""

    def __init__(self, lm: VoRAModel, teacher: Optional[VoRATeacher], distill: bool):
        super().__init__(lm)
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

    def teacher_features(self, pixel_values, hint=()) -> Optional[dict]:
        """This stage's distillation targets for the micro-batch ({} or None where it has none)."""
        if not self.distill:
            return None
        if self.teacher is not None:
            feats = self.teacher(pixel_values)
            for stage, layers in self.consumers.items():  # each stage gets only its blocks
                stacked = torch.stack([feats[l] for l in layers]).to(self.config.params_dtype)
                feature_exchange.send_features(stacked, [stage], hint=hint)
            return feats
        if self.stage in self.consumers:
            device = torch.cuda.current_device() if torch.cuda.is_available() else torch.device("cpu")
            stacked = feature_exchange.recv_features(self.config.params_dtype, device, with_grad=False,
                                                     hint=hint)
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
        feats = self.teacher_features(pixel_values, hint=input_ids.shape)
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

    def stage_aux_loss(self) -> float | None:
        """This stage's share of the step's distillation loss, averaged over its micro-batches
        (None without distillation, on every rank alike)."""
        if not self.distill:
            return None
        if not self.distill_record:
            return 0.0
        return float(sum(r.float().cpu() for r in self.distill_record)) / len(self.distill_record)

    # -- groups and checkpoints ----------------------------------------------------------------
    def parameter_groups(self) -> dict:
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
