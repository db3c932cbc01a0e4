"""Decoder-only Hugging Face LLM checkpoints (Qwen2, Llama: megatron_ext/core/llm_families.py) into and out of
Megatron GPTModel-based models.

`llm_preset_from_hf` turns config.json into this project's `llm` preset section;
`load_llm` fills a built model (a plain GPTModel, or the language model of a ROSE/VLoRA/VoRA
model, at any TP/PP rank, local or TE layers) from the checkpoint directory, reading only the
slices that rank holds. Method parameters (generators, LoRA) are not in an LLM checkpoint and keep
their initialisation (zero-initialised outputs make the model equal the LLM at step 0).
`megatron_to_hf` and `hf_text_config` write the same names and config back out.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_ext.core.fused_layout import fuse, unfuse
from megatron_ext.core.llm_config import megatron_rope_kwargs
from megatron_ext.core.llm_families import FAMILIES, Family, of_preset
from megatron_ext.core.specs import stage_layers
from megatron_ext.hf.safetensors_dir import CheckpointError, SafetensorsDir

log = logging.getLogger(__name__)


def family_of_hf_config(cfg: dict, where) -> Family:
    """The family of a HF config.json (its `architectures`, else its model_type)."""
    archs = cfg.get("architectures") or [cfg.get("model_type")]
    for family in FAMILIES.values():
        if family.hf_class in archs or family.name == cfg.get("model_type") and not cfg.get("architectures"):
            return family
    raise CheckpointError(f"{where}: architecture {archs} is not supported by this importer; "
                          f"supported: {sorted(f.hf_class for f in FAMILIES.values())}")


def read_hf_config(path: str | Path) -> dict:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} not found: expected a Hugging Face checkpoint directory "
                              "(config.json + *.safetensors)")
    cfg = json.loads(cfg_file.read_text())
    why = family_of_hf_config(cfg, path).unsupported(cfg)
    if why:
        raise CheckpointError(f"{path}: {why}")
    rope_scaling(cfg, path)  # refuse a RoPE variant Megatron's rotary embedding cannot reproduce
    return cfg


def rope_scaling(cfg: dict, where="config.json") -> dict | None:
    """The RoPE scaling of a HF config (transformers 5 `rope_parameters`, or the older top-level
    `rope_scaling`) as the preset's llm.rope_scaling, or None for plain RoPE."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.pop("rope_theta", None)
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    if kind == "default":
        return None
    scaling = dict(rope_type=kind, **rope)
    try:
        megatron_rope_kwargs(scaling)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return scaling


def pad_vocab(vocab: int, tp: int, multiple: int = 128) -> int:
    """Megatron's padding: a multiple of `multiple * tp`, so each TP rank holds equal rows."""
    step = multiple * tp
    return -(-vocab // step) * step


def llm_preset_from_hf(path: str | Path, tp: int = 1, vocab_multiple: int = 128) -> dict:
    cfg = read_hf_config(path)
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    llm = dict(
        architecture=family_of_hf_config(cfg, path).name,
        num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"], num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads", heads),
        kv_channels=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        vocab_size=pad_vocab(cfg["vocab_size"], tp, vocab_multiple),
        max_position_embeddings=cfg["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hf_vocab_size=cfg["vocab_size"],
    )
    scaling = rope_scaling(cfg, path)
    if scaling:
        llm["rope_scaling"] = scaling
    return llm


_SHAPE_KEYS = ("architecture", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "kv_channels", "rope_theta", "norm_eps", "tie_word_embeddings",
               "rope_scaling")


def check_preset(llm: dict, path: str | Path) -> None:
    """Refuse a preset whose LLM is not the checkpoint's (one line per differing key): a wrong
    rope_theta or norm_eps would otherwise load without an error and give a different model."""
    ckpt = llm_preset_from_hf(path, vocab_multiple=1)
    ours = dict(llm, architecture=of_preset(llm).name)
    ours.setdefault("num_query_groups", ours["num_attention_heads"])
    ours.setdefault("kv_channels", ours["hidden_size"] // ours["num_attention_heads"])
    ours.setdefault("tie_word_embeddings", False)
    same = lambda k: ours.get(k) == ckpt.get(k) or (  # GGUF stores eps in float32: 1e-5 -> 9.99999975e-06
        k in ("rope_theta", "norm_eps") and ours.get(k) is not None
        and math.isclose(float(ours[k]), float(ckpt[k]), rel_tol=1e-6))
    diff = [f"llm.{k}: preset {ours.get(k)!r}, checkpoint {ckpt.get(k)!r}" for k in _SHAPE_KEYS if not same(k)]
    if llm["vocab_size"] < ckpt["hf_vocab_size"]:
        diff.append(f"llm.vocab_size: preset {llm['vocab_size']} < the checkpoint's {ckpt['hf_vocab_size']}")
    if diff:
        raise CheckpointError(f"the model preset does not match the checkpoint {path}: " + "; ".join(diff))


def hf_text_config(llm: dict, hf_vocab_size: int, dtype: str = "float32"):
    """The transformers config of a preset's LLM (Qwen2Config, LlamaConfig, ...) for an export."""
    import transformers

    arch = of_preset(llm)
    heads = llm["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 1e6))}
    rope.update(llm.get("rope_scaling") or {})
    return getattr(transformers, arch.config_class)(
        hidden_size=llm["hidden_size"], intermediate_size=llm["ffn_hidden_size"],
        num_hidden_layers=llm["num_layers"], num_attention_heads=heads,
        num_key_value_heads=llm.get("num_query_groups", heads),
        head_dim=llm.get("kv_channels") or llm["hidden_size"] // heads, vocab_size=hf_vocab_size,
        max_position_embeddings=llm["max_position_embeddings"], rms_norm_eps=llm.get("norm_eps", 1e-6),
        rope_parameters=rope, tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        architectures=[arch.hf_class], dtype=dtype)


class _Reader:
    """Maps one Megatron parameter (this rank's shard) to checkpoint slices."""

    def __init__(self, ckpt: SafetensorsDir, config, hf_vocab: int, tied: bool):
        self.ckpt, self.config, self.hf_vocab, self.tied = ckpt, config, hf_vocab, tied
        self.tp = parallel_state.get_tensor_model_parallel_world_size()
        self.rank = parallel_state.get_tensor_model_parallel_rank()

    def rows(self, key: str, total: int) -> torch.Tensor:
        return self._shard(key, 0, total)

    def cols(self, key: str, total: int) -> torch.Tensor:
        return self._shard(key, 1, total)

    def _shard(self, key: str, dim: int, total: int) -> torch.Tensor:
        """This TP rank's 1/tp of `key` along dim, after checking the checkpoint against the config
        (a sliced read would otherwise hide a mismatch)."""
        shape = self.ckpt.shape(key)
        other = self.config.hidden_size
        want = (total, other) if dim == 0 else (other, total)
        if shape[dim] != total or (len(shape) == 2 and shape[1 - dim] != other):
            raise CheckpointError(
                f"'{key}' has shape {shape} in the checkpoint but the config implies "
                f"{want[:len(shape)]}; does config.json match the safetensors?")
        n = total // self.tp
        return self.ckpt.read(key, dim, self.rank * n, (self.rank + 1) * n)

    def vocab_rows(self, key: str, padded: int) -> torch.Tensor:
        """This rank's rows of a (vocab, hidden) matrix; rows past the real vocabulary are zero."""
        n = padded // self.tp
        start, stop = self.rank * n, (self.rank + 1) * n
        out = torch.zeros(n, self.config.hidden_size)
        if start < self.hf_vocab:
            real = self.ckpt.read(key, 0, start, min(stop, self.hf_vocab))
            out[: real.shape[0]] = real
        return out

    def projection(self, layer: int, part: str, kind: str) -> torch.Tensor:
        c = self.config
        attn = f"model.layers.{layer}.self_attn."
        mlp = f"model.layers.{layer}.mlp."
        kv = c.num_query_groups * c.kv_channels
        if part == "q":
            return self.rows(f"{attn}q_proj.{kind}", c.num_attention_heads * c.kv_channels)
        if part in ("k", "v"):
            return self.rows(f"{attn}{part}_proj.{kind}", kv)
        if part == "o":
            return self.cols(f"{attn}o_proj.weight", c.num_attention_heads * c.kv_channels)
        if part in ("gate", "up"):
            return self.rows(f"{mlp}{part}_proj.weight", c.ffn_hidden_size)
        if part == "down":
            return self.cols(f"{mlp}down_proj.weight", c.ffn_hidden_size)
        raise KeyError(part)

    def fused(self, layer: int, linear: str, kind: str) -> torch.Tensor:
        if linear == "linear_qkv":
            parts = [self.projection(layer, p, kind) for p in ("q", "k", "v")]
            groups = self.config.num_query_groups // self.tp
            return fuse([t.T if t.dim() == 2 else t for t in parts], groups).T.contiguous() \
                if kind == "weight" else fuse(parts, groups)
        if linear == "linear_fc1":
            return torch.cat([self.projection(layer, "gate", kind), self.projection(layer, "up", kind)])
        return self.projection(layer, {"linear_proj": "o", "linear_fc2": "down"}[linear], kind)


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_NORMS = {"input_layernorm.weight": "input_layernorm", "self_attention.linear_qkv.layer_norm_weight":
          "input_layernorm", "pre_mlp_layernorm.weight": "post_attention_layernorm",
          "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm"}
_LINEAR = re.compile(r"^(?:self_attention|mlp)\.(linear_\w+?)(?:\.parts\.(\w+))?\.(weight|bias)$")
_LORA_B = re.compile(r"^(?:self_attention|mlp)\.linear_\w+?\.lora_B\.(\w+)$")


def _target(reader: _Reader, key: str, offset: int, padded_vocab: int):
    """The checkpoint tensor for one Megatron language-model key, or None if not an LLM weight."""
    if key == "embedding.word_embeddings.weight":
        return reader.vocab_rows("model.embed_tokens.weight", padded_vocab)
    if key == "output_layer.weight":
        return reader.vocab_rows("model.embed_tokens.weight" if reader.tied else "lm_head.weight",
                                 padded_vocab)
    if key == "decoder.final_layernorm.weight":
        return reader.ckpt.read("model.norm.weight")
    m = _LAYER.match(key)
    if not m:
        return None
    layer, rest = int(m.group(1)) + offset, m.group(2)
    if rest in _NORMS:
        return reader.ckpt.read(f"model.layers.{layer}.{_NORMS[rest]}.weight")
    m = _LINEAR.match(rest)
    if not m:
        return None
    linear, part, kind = m.groups()
    if part is not None:
        return reader.projection(layer, part, kind)
    return reader.fused(layer, linear, kind)


def load_llm(language_model: torch.nn.Module, path: str | Path, hf_vocab_size: int | None = None,
             tie_word_embeddings: bool | None = None) -> list[str]:
    """Fill `language_model` (a Megatron GPTModel on this rank) from a Qwen2 or Llama checkpoint
    directory.

    Returns the keys that are not LLM weights and were left as initialised (e.g. LoRA parameters
    placed inside the decoder). Raises CheckpointError for missing tensors or shape mismatches.
    """
    cfg = read_hf_config(path)
    arch = family_of_hf_config(cfg, path)
    config = language_model.config
    if config.add_qkv_bias != arch.qkv_bias:
        raise CheckpointError(f"{path} is a {arch.hf_class} checkpoint (q/k/v bias: {arch.qkv_bias}) but the "
                              f"model was built with add_qkv_bias={config.add_qkv_bias}: set the preset's "
                              f"llm.architecture: {arch.name}")
    ckpt = SafetensorsDir(path)
    tied = cfg.get("tie_word_embeddings", False) if tie_word_embeddings is None else tie_word_embeddings
    reader = _Reader(ckpt, config, hf_vocab_size or cfg["vocab_size"], tied)
    offset = stage_layers(config)[0] - 1
    padded = language_model.vocab_size
    state = language_model.state_dict()
    new, untouched = {}, []
    for key, current in state.items():
        if key.endswith("_extra_state") or not torch.is_tensor(current):
            continue
        value = _target(reader, key, offset, padded)
        if value is None:
            untouched.append(key)
            continue
        if tuple(value.shape) != tuple(current.shape):
            raise CheckpointError(
                f"{key}: the checkpoint gives shape {tuple(value.shape)} but the model built from the "
                f"config expects {tuple(current.shape)} (TP rank {reader.rank} of {reader.tp}); does "
                f"config.json match the safetensors in {path}?")
        new[key] = value.to(current.dtype)
    language_model.load_state_dict(new, strict=False)
    if untouched:
        log.info("left as initialised (not LLM weights): %d tensors, e.g. %s", len(untouched), untouched[:3])
    return untouched


_HF_LINEAR = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}


def megatron_to_hf(state: dict, config, hf_vocab_size: int, prefix: str = "") -> dict:
    """A full (TP=1, PP=1) Megatron language-model state dict -> Qwen2/LlamaForCausalLM names.

    Accepts plain fused linears, per-part (ROSE) linears and TE's fused norms; drops padded
    vocabulary rows. `prefix` is prepended to every Hugging Face name."""
    out = {}
    put = lambda name, t: out.__setitem__(prefix + name, t.detach().clone().contiguous())
    heads_q = config.num_attention_heads * config.kv_channels
    kv = config.num_query_groups * config.kv_channels
    for key, t in state.items():
        if key.endswith("_extra_state") or not torch.is_tensor(t):
            continue
        if key == "embedding.word_embeddings.weight":
            put("model.embed_tokens.weight", t[:hf_vocab_size])
        elif key == "output_layer.weight":
            put("lm_head.weight", t[:hf_vocab_size])
        elif key == "decoder.final_layernorm.weight":
            put("model.norm.weight", t)
        elif m := _LAYER.match(key):
            layer, rest = int(m.group(1)), m.group(2)
            base = f"model.layers.{layer}."
            if rest in _NORMS:
                put(f"{base}{_NORMS[rest]}.weight", t)
                continue
            if lb := _LORA_B.match(rest):  # VLoRA's W_s, kept beside its projection
                put(f"{base}{_HF_LINEAR[lb.group(1)]}.lora_B", t)
                continue
            lm = _LINEAR.match(rest)
            if not lm:
                raise KeyError(f"no Hugging Face name for Megatron tensor '{key}' (static LoRA "
                               "adapters are merged before export)")
            linear, part, kind = lm.groups()
            if part is not None:
                pieces = {part: t}
            elif linear == "linear_qkv":
                split = unfuse(t.T if kind == "weight" else t, [heads_q, kv, kv], config.num_query_groups)
                pieces = dict(zip("qkv", [s.T if kind == "weight" else s for s in split]))
            elif linear == "linear_fc1":
                pieces = dict(zip(("gate", "up"), t.chunk(2, dim=0)))
            else:
                pieces = {{"linear_proj": "o", "linear_fc2": "down"}[linear]: t}
            for p, piece in pieces.items():
                put(f"{base}{_HF_LINEAR[p]}.{kind}", piece)
        else:
            raise KeyError(f"no Hugging Face name for Megatron tensor '{key}'")
    return out
