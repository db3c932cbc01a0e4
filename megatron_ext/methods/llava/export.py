"""LLaVA to a Hugging Face folder that transformers loads natively as LlavaForConditionalGeneration
(no remote code): the preset's text model (Qwen2 or Llama), SigLIP/CLIP vision tower, the mlp2x_gelu projector, and a
LlavaProcessor that expands one image placeholder into the tower's number of visual tokens.

The chat template puts the image's placeholder before the conversation, as training put the
image tokens before the prompt (megatron_ext/data/text.py encode_pair).
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import save_torch_state_dict
from transformers import GenerationConfig, LlavaConfig, LlavaProcessor, PreTrainedConfig

from megatron_ext.hf.decoder import hf_text_config, megatron_to_hf
from megatron_ext.hf.image_placeholder import image_placeholder
from megatron_ext.methods.spec import HFExport

log = logging.getLogger(__name__)


def chat_template(image_token: str) -> str:
    return ("{% for m in messages %}{% if m['content'] is not string %}{% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}" + image_token + "{% endif %}{% endfor %}{% endif %}{% endfor %}"
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
            "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hf_config(model, llm: dict, hf_vocab: int, image_token_id: int, dtype: str):
    """transformers' LlavaConfig of a LlavaVisionModel (its tower decides the feature strategy)."""
    tower, llava = model.vision, model.lm.llava
    tied = bool(llm.get("tie_word_embeddings", False))
    return LlavaConfig(
        vision_config=tower.model.config, text_config=hf_text_config(llm, hf_vocab, dtype),
        image_token_id=image_token_id, projector_hidden_act="gelu",
        # CLIP's class token is dropped ("default"), as the training tower drops it
        vision_feature_select_strategy="default" if tower.drop_cls else "full",
        vision_feature_layer=tower.feature_layer, multimodal_projector_bias=llava.projector_bias,
        tie_word_embeddings=tied, dtype=dtype)


def hf_state_dict(model, hf_vocab: int) -> dict:
    """LlavaForConditionalGeneration's tensors from a TP=1, PP=1 LlavaVisionModel."""
    lm = model.lm
    text = megatron_to_hf(lm.language_model.state_dict(), lm.config, hf_vocab)
    state = {(f"model.language_model.{k.removeprefix('model.')}" if k.startswith("model.") else k): v
             for k, v in text.items()}
    for prefix, module in (("model.multi_modal_projector.", lm.projector), ("model.vision_tower.", model.vision.model)):
        state.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
    return state


def llava_export(model, tokenizer):
    """LLaVA with a tower transformers lacks (EfficientNet-Lite): the project's remote-code folder,
    the projector beside the LLM, one placeholder per 32 x 32 pixels before the text."""
    lm, token = model.lm, image_placeholder(tokenizer)
    return HFExport(
        lm=lm, tower=model.vision,
        state={f"projector.{k}": v.detach().clone() for k, v in lm.projector.state_dict().items()},
        injection={"image_token_id": tokenizer.convert_tokens_to_ids(token),
                   "projector_bias": lm.llava.projector_bias},
        processor={"image_token": token, "patch_size": model.vision.model.config.patch_size})


def export_llava(model, llm: dict, out_dir, tokenizer, image_processor, max_shard_size: str = "2GB",
                 max_new_tokens: int = 64) -> Path | None:
    """Write a TP=1, PP=1 LlavaVisionModel with its weights loaded as a native HF LLaVA folder;
    None where transformers has no class for the tower (the remote-code export writes it then)."""
    if model.vision is None:
        raise ValueError("export from a TP=1, PP=1 model with its vision tower (model.vision_weights)")
    if not isinstance(model.vision.model.config, PreTrainedConfig):
        return None
    image_token = image_placeholder(tokenizer)  # the one training used; raises if there is none
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    hf_vocab = len(tokenizer)
    if hf_vocab > llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {hf_vocab} ids but the model's vocabulary is {llm['vocab_size']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model, hf_vocab)
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    config = hf_config(model, llm, hf_vocab, image_token_id, dtype)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(out)
    tower = model.vision
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                   patch_size=tower.model.config.patch_size,
                   vision_feature_select_strategy=config.vision_feature_select_strategy,
                   num_additional_image_tokens=1 if tower.drop_cls else 0,
                   chat_template=chat_template(image_token), image_token=image_token).save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = eos if isinstance(eos, int) and eos != tokenizer.unk_token_id else tokenizer.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos,
                     max_new_tokens=max_new_tokens, do_sample=False).save_pretrained(out)
    log.info("exported LLaVA (%d tensors) to %s: LlavaForConditionalGeneration, no remote code", len(state), out)
    return out
