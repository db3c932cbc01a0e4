"""Method "none": the plain base LLM (Megatron's GPTModel from the same layer specs), the reference
every method must equal at initialisation; visual inputs are ignored."""

from megatron_ext.methods.none.model import BaseLLM, build_none
from megatron_ext.methods.spec import MethodSpec

SPEC = MethodSpec(name="none", config=lambda preset, **overrides: None, build=build_none,
                  stages={"s1": ("llm",)}, inputs="none", flops=lambda *args, **kwargs: {})

__all__ = ["BaseLLM", "SPEC", "build_none"]
