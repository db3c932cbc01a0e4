"""LLMWrapper: a model around an InjectedGPTModel (a vision tower, a teacher) that the training
loop runs like the LLM itself: Megatron's schedule sets its input tensor, and the loop's protocol
(core/injected.py) is answered by the LLM unless the wrapper adds to it."""

from __future__ import annotations

from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule


class LLMWrapper(MegatronModule):
    def __init__(self, lm):
        super().__init__(lm.config)
        self.lm = lm
        self.model_type = lm.model_type  # read by Megatron's pipeline schedules
        self.stage = parallel_state.get_pipeline_model_parallel_rank()

    def set_input_tensor(self, input_tensor) -> None:
        self.lm.set_input_tensor(input_tensor)

    @property
    def method(self) -> str:
        return self.lm.method

    @property
    def injected(self):
        return self.lm

    def pipeline_replicated_parameters(self) -> list:
        return self.lm.pipeline_replicated_parameters()

    def begin_step(self, aux_loss_scale: float) -> None:
        self.lm.begin_step(aux_loss_scale)

    def stage_aux_loss(self) -> float | None:
        return self.lm.stage_aux_loss()
