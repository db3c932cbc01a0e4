"""Export to a Hugging Face folder that `transformers` loads with trust_remote_code.

The folder holds config.json (auto_map to the modeling code shipped beside it), sharded
safetensors with an index, tokenizer and processor files, and generation_config.json. Only torch
and transformers are needed to load it: the modeling code (megatron_ext/hf/remote) and the two
pure-PyTorch files it builds on (rotation.py, vrmg.py) are copied in.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from megatron_ext.hf.qwen2 import megatron_to_hf

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SHIPPED = [HERE / "hf" / "remote" / "configuration_paramvision.py",
           HERE / "hf" / "remote" / "modeling_paramvision.py",
           HERE / "hf" / "remote" / "processing_paramvision.py", HERE / "rotation.py", HERE / "vrmg.py",
           HERE / "vlora_generator.py", HERE / "vora_embedding.py"]
IMAGE_TOKEN = "<|image_pad|>"  # VoRA's image placeholder, a Qwen2.5 special token
AUTO_MAP = {"AutoConfig": "configuration_paramvision.ParamVisionConfig",
            "AutoModelForCausalLM": "modeling_paramvision.ParamVisionForCausalLM"}


def qwen2_text_config(llm: dict, hf_vocab_size: int, dtype: str = "float32"):
    from transformers import Qwen2Config

    heads = llm["num_attention_heads"]
    return Qwen2Config(
        hidden_size=llm["hidden_size"], intermediate_size=llm["ffn_hidden_size"],
        num_hidden_layers=llm["num_layers"], num_attention_heads=heads,
        num_key_value_heads=llm.get("num_query_groups", heads),
        head_dim=llm.get("kv_channels") or llm["hidden_size"] // heads, vocab_size=hf_vocab_size,
        max_position_embeddings=llm["max_position_embeddings"], rms_norm_eps=llm.get("norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 1e6))},
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)), dtype=dtype)


def _injection(lm, tokenizer) -> tuple[str, str, dict]:
    """(method, state-dict prefix of its generator, the settings the modeling code rebuilds it from)."""
    from megatron_ext.model import ROSEModel
    from megatron_ext.vlora import VLoRAModel
    from megatron_ext.vora import VoRAModel

    if isinstance(lm, VoRAModel):
        v = lm.vora
        return "vora", "vision_embedding", {
            "embedding": {"patch_size": v.patch_size, "image_size": v.image_size,
                          "embed_width": v.embed_width, "in_channels": v.in_channels},
            "bidirectional": v.bidirectional,
            "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}
    if isinstance(lm, ROSEModel):
        rose = lm.rose
        return "rose", "vrmg", {"layers": rose.equipped_layers(lm.config.num_layers),
                                "projections": list(rose.projections), "blocks": rose.blocks,
                                "generator_width": rose.generator_width,
                                "generator_heads": rose.generator_heads}
    if isinstance(lm, VLoRAModel):
        v = lm.vlora
        return "vlora", "generator", {
            "layers": lm.all_equipped, "weight_types": list(v.weight_types), "rank": v.rank,
            "scale": (v.alpha if v.alpha is not None else v.rank) / v.rank,
            "generator_width": v.generator_width, "generator_depth": v.generator_depth,
            "generator_heads": v.generator_heads, "generator_mlp_ratio": v.generator_mlp_ratio}
    raise ValueError(f"no Hugging Face export for {type(lm).__name__} yet")


def export_model(model, llm: dict, out_dir: str | Path, tokenizer, image_processor,
                 max_shard_size: str = "2GB", max_new_tokens: int = 64) -> Path:
    """Write a model built at TP=1, PP=1 with its weights loaded as a HF folder: a
    VisionLanguageModel around ROSE or VLoRA, or a VoRAModel, whose LoRA is merged into the base
    weights first (in place: VoRA is exported merged, as the paper deploys it)."""
    from megatron_ext.vora import VoRAModel
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() * \
            parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("export from a TP=1, PP=1 model (distributed checkpoints reshard on load)")
    lm, tower = (model, None) if isinstance(model, VoRAModel) else (model.lm, model.vision)
    method, generator_prefix, injection = _injection(lm, tokenizer)
    if method == "vora":
        lm.merge_and_unload()
        generator = lm.vision_embedding
    else:
        generator = lm.generator
    hf_vocab = len(tokenizer)
    if hf_vocab > llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {hf_vocab} ids but the model's vocabulary is {llm['vocab_size']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    state = megatron_to_hf(lm.language_model.state_dict(), lm.config, hf_vocab, prefix="language_model.")
    state.update({f"{generator_prefix}.{k}": v.detach().clone() for k, v in generator.state_dict().items()})
    if tower is not None:
        state.update({f"vision_tower.{k}": v.detach().clone() for k, v in tower.model.state_dict().items()})
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)

    for f in SHIPPED:
        shutil.copy2(f, out / f.name)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    config = {
        "architectures": ["ParamVisionForCausalLM"], "model_type": "paramvision", "auto_map": AUTO_MAP,
        "method": method, "feature_layer": tower.feature_layer if tower else None, "dtype": dtype,
        "text_config": qwen2_text_config(llm, hf_vocab, dtype).to_dict(),
        "vision_config": tower.model.config.to_dict() if tower else None,
        "injection": injection,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    processor = {"processor_class": "ParamVisionProcessor",
                 "auto_map": {"AutoProcessor": "processing_paramvision.ParamVisionProcessor"}}
    if method == "vora":
        grid = injection["embedding"]["image_size"] // injection["embedding"]["patch_size"]
        processor.update(image_token=IMAGE_TOKEN, image_tokens=grid * grid)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    eos = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos,
                     max_new_tokens=max_new_tokens, do_sample=False).save_pretrained(out)
    log.info("exported %d tensors to %s", len(state), out)
    return out
