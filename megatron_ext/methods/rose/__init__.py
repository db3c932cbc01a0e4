"""ROSE: per-image block-diagonal rotations of the frozen LLM's projections (docs/ARCHITECTURE.md)."""

from megatron_ext.methods.rose.config import RoseConfig, RoseConfigError, rose_config
from megatron_ext.methods.rose.export import rose_export
from megatron_ext.methods.rose.flops import rose_flops
from megatron_ext.methods.rose.model import ROSEModel, build_rose
from megatron_ext.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="rose", config=rose_config, build=build_rose,
    # the paper's stages: S1 the VRMG, S2 + the vision encoder, S3 everything
    stages={"s1": ("generator",), "s2": ("generator", "vision"), "s3": ("generator", "vision", "llm")},
    inputs="features", flops=rose_flops, export=rose_export)

__all__ = ["ROSEModel", "RoseConfig", "RoseConfigError", "SPEC", "build_rose", "rose_config"]
