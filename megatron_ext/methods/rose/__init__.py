"""ROSE: per-image block-diagonal rotations of the frozen LLM's projections (docs/ARCHITECTURE.md)."""

from megatron_ext.methods.spec import MethodSpec
from megatron_ext.model import build_rose
from megatron_ext.presets import rose_config

SPEC = MethodSpec(
    name="rose", config=rose_config, build=build_rose,
    # the paper's stages: S1 the VRMG, S2 + the vision encoder, S3 everything
    stages={"s1": ("generator",), "s2": ("generator", "vision"), "s3": ("generator", "vision", "llm")},
    inputs="features")
