"""A model (built at TP=1, PP=1, weights loaded) as a Hugging Face folder that `transformers`
loads with trust_remote_code.

The folder holds config.json (auto_map to the modeling code shipped beside it), sharded
safetensors with an index, tokenizer and processor files, generation_config.json and the model
card. Only torch and transformers are needed to load it: the modeling code (megatron_ext/hf/remote)
and the pure-PyTorch files of the methods it builds on (SHIPPED) are copied in.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

from huggingface_hub import save_torch_state_dict
from megatron.core import parallel_state
from transformers import GenerationConfig

from megatron_ext.export.model_card import write_model_card
from megatron_ext.export.target import ExportTarget, check_target
from megatron_ext.hf.chat_template import chat_template
from megatron_ext.hf.decoder import hf_text_config, megatron_to_hf
from megatron_ext.methods import MethodSpec, get_method

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent.parent  # megatron_ext/
# the shared modeling code and the pure-PyTorch files of every method it imports
SHIPPED = [HERE / "hf" / "remote" / "configuration_paramvision.py",
           HERE / "hf" / "remote" / "modeling_paramvision.py",
           HERE / "hf" / "remote" / "processing_paramvision.py",
           HERE / "methods" / "rose" / "rotation.py", HERE / "methods" / "rose" / "vrmg.py",
           HERE / "methods" / "vlora" / "vlora_generator.py",
           HERE / "methods" / "vora" / "vora_embedding.py",
           HERE / "hf" / "efficientnet.py"]  # the EfficientNet-Lite tower (not in transformers)
AUTO_MAP = {"AutoConfig": "configuration_paramvision.ParamVisionConfig",
            "AutoModelForCausalLM": "modeling_paramvision.ParamVisionForCausalLM",
            # lmms-eval's generic chat model loads a model_type it does not know with AutoModel
            "AutoModel": "modeling_paramvision.ParamVisionForCausalLM",
            # pipeline("image-text-to-text") and the HF habit for vision-language models
            "AutoModelForImageTextToText": "modeling_paramvision.ParamVisionForCausalLM"}


def export_model(model, llm: dict, out_dir: str | Path, tokenizer, image_processor,
                 max_shard_size: str = "2GB", max_new_tokens: int = 64, overwrite: bool = False,
                 run_dir: str | Path | None = None, evaluation: str | Path | None = None,
                 spec: MethodSpec | None = None) -> Path:
    """Write a model built at TP=1, PP=1 with its weights loaded as a HF folder: what the training
    loop ran (e.g. a VisionLanguageModel around ROSE or VLoRA) or a bare LLM, as its method's
    spec exports it (VoRA merges its LoRA into the base weights first, in place, as the paper
    deploys it). A non-empty out_dir is refused unless overwrite (export/target.py).
    The folder's README.md is its model card (export/model_card.py): run_dir, the run the
    weights come from, says what was trained on what; evaluation, a results.json, how it scored."""
    check_target(out_dir, overwrite)
    if parallel_state.get_tensor_model_parallel_world_size() * \
            parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("export from a TP=1, PP=1 model (distributed checkpoints reshard on load)")
    spec = spec or get_method(model.method)  # the caller's, where it resolved one
    if spec.export_native is not None:  # a class transformers has: its own folder, no remote code
        out = spec.export_native(model, llm, out_dir, tokenizer, image_processor, max_shard_size, max_new_tokens)
        if out is not None:  # None: a part transformers lacks; the remote-code folder below
            write_model_card(out, spec.name, run_dir, evaluation)
            return out
    if spec.export is None:
        raise ValueError(f"method {spec.name} has no Hugging Face export yet")
    part = spec.export(model, tokenizer)
    lm, tower = part.lm, part.tower
    hf_vocab = len(tokenizer)
    if hf_vocab > llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {hf_vocab} ids but the model's vocabulary is {llm['vocab_size']}")
    target = ExportTarget(out_dir, overwrite)
    out = target.staging  # moved into out_dir by target.commit()

    state = megatron_to_hf(lm.language_model.state_dict(), lm.config, hf_vocab, prefix="language_model.")
    state.update(part.state)
    if tower is not None:
        state.update({f"vision_tower.{k}": v.detach().clone() for k, v in tower.model.state_dict().items()})
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)

    for f in [*SHIPPED, *part.files]:
        shutil.copy2(f, out / f.name)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    config = {
        "architectures": ["ParamVisionForCausalLM"], "model_type": "paramvision", "auto_map": AUTO_MAP,
        "method": spec.name, "feature_layer": tower.feature_layer if tower else None, "dtype": dtype,
        "text_config": hf_text_config(llm, hf_vocab, dtype).to_dict(),  # Qwen2 or Llama (llm.architecture)
        "vision_config": tower.model.config.to_dict() if tower else None,
        "injection": part.injection,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = copy.deepcopy(tokenizer)  # the caller's keeps its own template
    # chat_template.jinja: the training prompt format, read by the tokenizer and the processor
    tokenizer.chat_template = chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    processor = {"processor_class": "ParamVisionProcessor",
                 "auto_map": {"AutoProcessor": "processing_paramvision.ParamVisionProcessor"}}
    processor.update(part.processor)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    eos = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos,
                     max_new_tokens=max_new_tokens, do_sample=False).save_pretrained(out)
    out = target.commit()
    write_model_card(out, spec.name, run_dir, evaluation)
    log.info("exported %d tensors to %s", len(state), out)
    return out
