"""Everything about a training run that can be checked before a process group, a model or a
loader exists: the config against the world size (batch, TP x PP), the method's settings against
TP/PP (rose.blocks % TP...), the paths the run reads (weights, tokenizer, init_from) and the
manifest (exists, lists samples). A mistake found here is one line on rank 0 and exit 2 (config)
or 1 (data) on every rank, instead of a traceback after the model is built."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

from megatron_ext.core.llm_config import qwen2_transformer_config
from megatron_ext.data.loader import image_tokens
from megatron_ext.methods import get_method, resolve_preset
from megatron_ext.training.config import ConfigError, TrainConfig, validate
from megatron_ext.training.model import RECOMPUTE, config_overrides
from pvcommon.errors import DataError


def _preset(cfg: TrainConfig) -> dict:
    try:
        return resolve_preset(cfg.model.preset)
    except FileNotFoundError:
        raise ConfigError(f"model.preset={cfg.model.preset}: no such preset (a name under "
                          f"configs/model/ or a YAML path)") from None


def _transformer_config(cfg: TrainConfig, preset: dict, spec):
    """The run's TransformerConfig at its TP/PP sizes (Megatron's own checks: stage layer counts...)."""
    overrides = {k: v for k, v in config_overrides(cfg, spec).items() if k != "fp8"}  # FP8 needs TE: GPU side
    return qwen2_transformer_config(preset["llm"], cfg.parallel.tensor, cfg.parallel.pipeline,
                                    torch.float32, **{**preset.get("transformer", {}), **overrides})


def method_spec(cfg: TrainConfig):
    """The run's MethodSpec (model.method in the registry); an unknown name is a ConfigError."""
    try:
        return get_method(cfg.model.method)
    except ValueError as e:
        raise ConfigError(f"model.method: {e}") from None


def _method_settings(cfg: TrainConfig, preset: dict, spec) -> None:
    """The method's own start-up validation (e.g. ROSE's blocks against TP), run on a
    TransformerConfig of the run's TP/PP sizes instead of inside the model's constructor."""
    try:
        tcfg = _transformer_config(cfg, preset, spec)
    except (ValueError, AssertionError) as e:
        t = cfg.train
        stages = (f", train.first_stage_layers={t.first_stage_layers}, train.last_stage_layers="
                  f"{t.last_stage_layers} of {preset['llm']['num_layers']} layers"
                  if t.first_stage_layers or t.last_stage_layers else "")
        raise ConfigError(f"model.preset={cfg.model.preset} with parallel.tensor={cfg.parallel.tensor}, "
                          f"parallel.pipeline={cfg.parallel.pipeline}{stages}: {e}") from None
    try:
        settings = spec.config(preset)  # the method's settings from the preset (None: nothing to check)
        if settings is None or not hasattr(settings, "validate"):
            return
        settings.validate(tcfg)
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"model.preset={cfg.model.preset} with parallel.tensor={cfg.parallel.tensor}, "
                          f"parallel.pipeline={cfg.parallel.pipeline}: {e}") from None


# selective recompute of these reruns a submodule in the backward, outside its layer's forward,
# where the per-image conditioning is no longer bound (full recompute carries it: core/context.py)
_UNCONDITIONED_RECOMPUTE = {"mlp", "moe", "shared_experts"}


def _recompute(cfg: TrainConfig, preset: dict) -> None:
    if cfg.train.recompute not in RECOMPUTE:
        raise ConfigError(f"train.recompute={cfg.train.recompute}: use full, selective, or leave it unset")
    settings = {**preset.get("transformer", {}), **RECOMPUTE[cfg.train.recompute]}
    modules = set(settings.get("recompute_modules") or ())
    if settings.get("recompute_granularity") == "selective" and modules & _UNCONDITIONED_RECOMPUTE:
        raise ConfigError(f"recompute_modules {sorted(modules & _UNCONDITIONED_RECOMPUTE)} (model.preset="
                          f"{cfg.model.preset}) reruns the MLP where the method's per-image weights are not "
                          "available: use train.recompute=full, or selective with core_attn/layernorm only")


def _fp8_shapes(cfg: TrainConfig, preset: dict, spec) -> None:
    """Transformer Engine's FP8 GEMMs (assert_dim_for_fp8_exec) need every linear's input to have
    rows (tokens of a micro-batch) divisible by 8 and a width divisible by 16: refused here with
    the numbers instead of an assertion inside the first forward."""
    if not cfg.train.fp8:
        return
    try:
        in_sequence = image_tokens(cfg, preset, spec)
    except Exception:  # noqa: BLE001 - the method's own check reports a bad vision setting
        in_sequence = 0
    seq = cfg.data.seq_length + in_sequence
    rows = seq * cfg.train.micro_batch_size
    if rows % 8:
        step = 8 // math.gcd(8, cfg.train.micro_batch_size)
        fix = cfg.data.seq_length + (-seq) % step
        raise ConfigError(
            f"train.fp8: Transformer Engine's FP8 GEMMs need the tokens of a micro-batch divisible by 8, "
            f"but sequence {seq} ({cfg.data.seq_length} text + {in_sequence} image tokens) x "
            f"train.micro_batch_size {cfg.train.micro_batch_size} = {rows}: set data.seq_length={fix} "
            f"(or a micro-batch size that makes it a multiple of 8)")
    llm, tp = preset["llm"], cfg.parallel.tensor
    heads = llm["num_attention_heads"]
    kv = llm.get("kv_channels") or llm["hidden_size"] // heads
    widths = {"hidden_size": llm["hidden_size"], "attention output / tensor parallel": heads * kv // tp,
              "ffn_hidden_size / tensor parallel": llm["ffn_hidden_size"] // tp}
    bad = {k: v for k, v in widths.items() if v % 16}
    if bad:
        raise ConfigError(f"train.fp8: Transformer Engine's FP8 GEMMs need linear input widths divisible "
                          f"by 16; model.preset={cfg.model.preset} at parallel.tensor={tp} gives {bad}: "
                          f"train in bf16 (unset train.fp8)")


def _paths(cfg: TrainConfig) -> None:
    m, d = cfg.model, cfg.data
    for key, value in (("model.llm_weights", m.llm_weights), ("model.vision_weights", m.vision_weights)):
        if value and not Path(value).is_dir():
            raise ConfigError(f"{key}={value}: no such directory (a local Hugging Face model folder)")
    if d.tokenizer != "bytes" and not Path(d.tokenizer).is_dir():
        raise ConfigError(f"data.tokenizer={d.tokenizer}: no such directory (a local tokenizer "
                          f"folder, or 'bytes')")
    if cfg.train.init_from and not Path(cfg.train.init_from).exists():
        raise ConfigError(f"train.init_from={cfg.train.init_from}: no such checkpoint or run directory")
    if importlib.util.find_spec("psutil") is None:  # dist_checkpointing's writer imports it late
        raise ConfigError("megatron.core.dist_checkpointing needs psutil to save: pip install psutil")


def check_manifest(path: str) -> int:
    """-> samples the manifest lists; a missing, unreadable or empty one is a DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.manifest={path}: not found (pipeline/shard.py writes "
                        f"<output_dir>/40_shards/manifest.json)")
    try:
        m = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"data.manifest={path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != "webdataset" or not isinstance(m.get("shards"), list):
        raise DataError(f"data.manifest={path}: not a training-shard manifest (pipeline/shard.py writes one)")
    samples = sum(int(e.get("samples", 0)) for e in m["shards"])
    if samples == 0:
        raise DataError(f"data.manifest={path}: lists 0 samples; the pipeline kept nothing (see its "
                        f"summary.json) or the shard stage has not run")
    missing = [e["tar"] for e in m["shards"] if not (p.parent / e["tar"]).is_file()]
    if missing:
        raise DataError(f"data.manifest={path}: {len(missing)} listed shard(s) missing beside it, "
                        f"e.g. {missing[0]}")
    return samples


def check(cfg: TrainConfig, world_size: int, spec=None) -> int:
    """All checks that need no process group; returns the data-parallel size. spec: the run's
    MethodSpec (the Trainer's); without one, model.method's (method_spec)."""
    dp = validate(cfg, world_size)
    _paths(cfg)
    if cfg.data.kind != "synthetic":
        check_manifest(cfg.data.manifest)
    preset = _preset(cfg)
    _recompute(cfg, preset)
    spec = spec or method_spec(cfg)
    _fp8_shapes(cfg, preset, spec)
    _method_settings(cfg, preset, spec)  # last: the only check that builds a TransformerConfig
    return dp
