"""LLaVA exported to a folder transformers loads natively as LlavaForConditionalGeneration (no
remote code): with a SigLIP tower (all tokens) and a CLIP tower (class token dropped), its logits
equal Megatron's (fp32), its processor expands one placeholder into the tower's visual tokens,
its chat template puts the image before the conversation as training did, and generate works."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_helpers import IMAGE, IMAGE_TOKENS, LLAVA, PATCH, siglip_config

pytestmark = pytest.mark.usefixtures("megatron_single_process")
HF_VOCAB = 151665


def _tower(kind):
    from transformers import CLIPVisionConfig

    from megatron_ext.hf.vision_tower import VisionTower

    torch.manual_seed(3)
    config = siglip_config() if kind == "siglip" else CLIPVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE, patch_size=PATCH)
    return VisionTower.from_config(config, feature_layer=LLAVA["llava"]["feature_layer"])


@pytest.fixture(scope="module", params=["siglip", "clip"])
def exported(request, tmp_path_factory):
    from transformers import SiglipImageProcessorPil

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods.llava.model import LlavaVisionModel, build_llava
    from recaption.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    preset = json.loads(json.dumps(LLAVA))
    preset["llm"]["vocab_size"] = 151680  # the real Qwen2.5 vocabulary, padded to a multiple of 128
    torch.manual_seed(0)
    model = LlavaVisionModel(build_llava(preset, backend="local"), _tower(request.param), train_vision=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking biases and norms, so every mapping is exercised
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    out = tmp_path_factory.mktemp("export") / f"llava-{request.param}"
    export_model(model, preset["llm"], out, tokenizer,
                 SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}), max_shard_size="5MB")
    return model, out, tokenizer


def _inputs(tokenizer, seed=0):
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = torch.randint(0, 151643, (2, 7), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([torch.full((2, IMAGE_TOKENS), image_id), text], dim=1)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed + 1))
    return ids, pixels, ids == image_id


def test_folder_is_native_llava_without_remote_code(exported):
    _, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in config
    assert not list(out.glob("*.py"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    keys = set(index["weight_map"])
    assert {"model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_2.bias",
            "lm_head.weight", "model.language_model.embed_tokens.weight"} <= keys
    assert any(k.startswith("model.vision_tower.") for k in keys)
    for f in ("processor_config.json", "generation_config.json", "tokenizer_config.json"):
        assert (out / f).is_file(), f


def test_transformers_logits_equal_megatron(exported):
    from transformers import LlavaForConditionalGeneration

    model, out, tokenizer = exported
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids, pixels, mask = _inputs(tokenizer)
    with torch.no_grad():
        ours = model(ids, torch.arange(ids.shape[1]).expand_as(ids), None, pixel_values=pixels,
                     image_mask=mask)[..., :HF_VOCAB]
        theirs = hf(input_ids=ids, pixel_values=pixels).logits
        other = hf(input_ids=ids, pixel_values=torch.randn_like(pixels)).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (other - theirs)[:, IMAGE_TOKENS:].abs().max() > 1e-3  # the image reaches the text


def test_processor_expands_the_placeholder_and_generate_captions(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _, out, tokenizer = exported
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "LlavaProcessor"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|image_pad|><|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = inputs["input_ids"][0]
    assert int((ids == image_id).sum()) == IMAGE_TOKENS and bool((ids[:IMAGE_TOKENS] == image_id).all())
    assert inputs["pixel_values"].shape == (1, 3, IMAGE, IMAGE)
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    generated = hf.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    assert isinstance(processor.decode(generated[0, ids.shape[0]:], skip_special_tokens=True), str)


def test_a_tower_transformers_lacks_exports_as_remote_code_with_equal_logits(efficientnet_dir, tmp_path):
    """EfficientNet-Lite is no transformers class, so LlavaForConditionalGeneration cannot hold it:
    the export writes the project's remote-code folder instead. Its processor puts one placeholder
    per 32 x 32 pixels before the text (25 at 160 px, 100 at 320 px), and its logits equal Megatron's."""
    from transformers import AutoModelForCausalLM, AutoProcessor, SiglipImageProcessorPil

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods.llava.model import LlavaVisionModel, build_llava
    from megatron_ext.hf.vision_tower import VisionTower
    from recaption.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    preset = json.loads(json.dumps(LLAVA))
    preset["llm"]["vocab_size"] = 151680
    preset["vision"]["hidden_size"] = 1280
    preset["llava"]["feature_layer"] = -1
    torch.manual_seed(0)
    tower = VisionTower.from_pretrained(efficientnet_dir, feature_layer=-1)
    model = LlavaVisionModel(build_llava(preset, backend="local"), tower, train_vision=False).eval()
    export_model(model, preset["llm"], tmp_path / "hf", tokenizer,
                 SiglipImageProcessorPil(size={"height": 160, "width": 160}))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ParamVisionForCausalLM"] and config["method"] == "llava"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    batch = processor(images=image, text="<|im_start|>user\nwhat shape?<|im_end|>\n")
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    assert int((ids == image_id).sum()) == 25 and bool((ids[0, :25] == image_id).all())
    with torch.no_grad():
        ours = model(ids, torch.arange(ids.shape[1])[None], None, pixel_values=pixels,
                     image_mask=ids == image_id)[..., :len(tokenizer)]
        theirs = hf(**batch).logits
        other = hf(input_ids=ids, pixel_values=torch.flip(pixels, dims=[-1])).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (other - theirs)[:, 25:].abs().max() > 1e-4  # the image reaches the text
    processor.image_processor.size = {"height": 320, "width": 320}
    assert int((processor(images=image, text="q")["input_ids"] == image_id).sum()) == 100
