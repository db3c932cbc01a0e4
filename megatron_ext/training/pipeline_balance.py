"""How many decoder layers the first and last pipeline stages hold (megatron-core's
num_layers_in_first_pipeline_stage / num_layers_in_last_pipeline_stage), from a cost estimate.

The first stage also runs the vision tower (and its backward when it trains); the last also runs
the LM head and the loss. Both are priced in training FLOPs per sample with the MFU counter's
conventions (training/mfu.py: 3x forward where weights train, 2x where the gradient only passes,
1x for a frozen tower), a decoder layer likewise (the method's own parts spread over the layers);
the split minimising the busiest stage wins, Megatron's even split on a tie. `train.first_stage_layers`
and `train.last_stage_layers` override it (docs/GPU.md, "Pipeline balance").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from megatron_ext.core.flops import attention_score_flops, decoder_projection_flops, lm_head_flops, llm_shape
from megatron_ext.methods import get_method
from megatron_ext.training.mfu import tower_forward_flops

log = logging.getLogger(__name__)
_logged: set = set()


@dataclass(frozen=True)
class StageCosts:
    layer: float   # one decoder layer, forward + backward, per sample
    first: float   # what the first stage adds (the tower)
    last: float    # what the last stage adds (the LM head)


def stage_costs(cfg, preset: dict, trainable: list[str], visual_tokens: int = 0, spec=None) -> StageCosts:
    spec = spec or get_method(cfg.model.method)
    llm = llm_shape(preset)
    text = cfg.data.seq_length
    seq = text + (visual_tokens if spec.visual_tokens_in_sequence else 0)
    llm_x = 3.0 if "llm" in trainable else 2.0
    layers = (decoder_projection_flops(llm, seq) + attention_score_flops(llm, seq)) * llm_x
    if spec.flops is not None:
        vdim = preset.get("vision", {}).get("hidden_size", llm["hidden"])
        layers += 3.0 * sum(spec.flops(llm, spec.config(preset), text, visual_tokens, vdim, merged=False).values())
    tower = tower_forward_flops(cfg.model.vision_weights, cfg.data.image_size) if spec.inputs == "features" else 0.0
    return StageCosts(layer=layers / llm["layers"],
                      first=tower * (3.0 if "vision" in trainable else 1.0),
                      last=lm_head_flops(llm, text) * llm_x)


def split(num_layers: int, pp: int, costs: StageCosts) -> tuple[int, int]:
    """(first, last) layer counts minimising the busiest stage's cost; the middle stages share the
    rest evenly (Megatron requires it divisible)."""
    def busiest(first, last):
        middle = (num_layers - first - last) // (pp - 2) if pp > 2 else 0
        return max(first * costs.layer + costs.first, last * costs.layer + costs.last, middle * costs.layer)

    even = num_layers // pp if num_layers % pp == 0 else None
    candidates = []
    for first in range(1, num_layers):
        for last in range(1, num_layers - first + 1):
            rest = num_layers - first - last
            if (pp == 2 and rest) or (pp > 2 and (rest < pp - 2 or rest % (pp - 2))):
                continue
            # ties: the even split first, then the most even split
            candidates.append((busiest(first, last), (first, last) != (even, even), abs(first - last), first, last))
    if not candidates:
        raise ValueError(f"{num_layers} layers cannot fill {pp} pipeline stages")
    _, _, _, first, last = min(candidates)
    return first, last


def default_stage_layers(cfg, preset: dict, trainable: list[str], visual_tokens: int = 0, spec=None
                         ) -> tuple[Optional[int], Optional[int]]:
    """(first, last) for the config: its own if set, else the estimate's where it differs from
    Megatron's even split (None, None: the even split)."""
    pp = cfg.parallel.pipeline
    t = cfg.train
    if pp < 2 or t.first_stage_layers is not None or t.last_stage_layers is not None:
        return t.first_stage_layers, t.last_stage_layers
    layers = preset["llm"]["num_layers"]
    costs = stage_costs(cfg, preset, trainable, visual_tokens, spec)
    first, last = split(layers, pp, costs)
    if (first, last, costs) not in _logged:
        _logged.add((first, last, costs))
        log.info("pipeline stages: %d layers on the first, %d on the last of %d (per sample: a layer %.3g, "
                 "the tower %.3g, the LM head %.3g GFLOP; train.first_stage_layers/last_stage_layers "
                 "override)", first, last, layers, costs.layer / 1e9, costs.first / 1e9, costs.last / 1e9)
    if layers % pp == 0 and first == last == layers // pp:
        return None, None
    return first, last
