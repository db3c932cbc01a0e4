"""Export of ROSE and VLoRA to a Hugging Face folder: transformers loads it (trust_remote_code), its
logits equal Megatron's, merge_vision gives a plain Qwen2 with the same logits for that image, and
the processor + generate path captions an image."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("megatron_single_process")
IMAGE = 32


# vlora-positional: the authors' learnable positions of the visual tokens (vlora.positional_tokens)
@pytest.fixture(scope="module", params=["rose", "vlora", "vlora-positional"])
def exported(request, tmp_path_factory):
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model, resolve_preset
    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from recaption.tiny import build_tokenizer
    from rose_helpers import randomize_generator

    tokenizer = build_tokenizer()
    method = request.param.split("-")[0]
    preset = json.loads(json.dumps(resolve_preset("tiny" if method == "rose" else "tiny-vlora")))
    preset["llm"]["vocab_size"] = 151680  # the real Qwen2.5 vocabulary, padded to a multiple of 128
    if request.param.endswith("positional"):
        preset["vlora"]["positional_tokens"] = (IMAGE // 8) ** 2  # the tower's 8-px patches
    torch.manual_seed(0)
    lm = build_model(preset, method=method, backend="local")
    if method == "rose":
        randomize_generator(lm, scale=0.1)
        equipped = lm.rose.equipped_layers(lm.config.num_layers)
    else:  # W_s starts at zero; give it weights so the branch is not a no-op
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in sorted(lm.named_parameters()):
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        equipped = lm.all_equipped
    tower = VisionTower.from_config(SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE, patch_size=8), feature_layer=-1)
    vlm = VisionLanguageModel(lm, tower, equipped, train_vision=False)
    out = tmp_path_factory.mktemp("export") / f"{request.param}-tiny"
    export_model(vlm, preset["llm"], out, tokenizer,
                 SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}), max_shard_size="5MB")
    return vlm, out, tokenizer


def _pixels(seed=0):
    return torch.randn(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def test_folder_layout(exported):
    _, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"):
        assert config["auto_map"][auto] == "modeling_paramvision.ParamVisionForCausalLM", auto
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    for f in ("modeling_paramvision.py", "rotation.py", "vrmg.py", "vlora_generator.py",
              "generation_config.json",
              "tokenizer_config.json", "processor_config.json"):
        assert (out / f).is_file(), f


def test_transformers_loads_it_and_logits_equal_megatron(exported):
    from transformers import AutoModelForCausalLM

    vlm, out, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(0, 151665, (1, 12), generator=torch.Generator().manual_seed(1))
    px = _pixels()
    with torch.no_grad():
        ours = vlm(ids, torch.arange(12)[None], None, px)[..., :151665]
        theirs = hf(input_ids=ids, pixel_values=px).logits
    assert (ours - theirs).abs().max() < 1e-4
    # another image changes the answer: the rotations carry the image
    with torch.no_grad():
        other = hf(input_ids=ids, pixel_values=_pixels(7)).logits
    assert (other - theirs).abs().max() > 1e-3

    merged = hf.merge_vision(px)
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (merged_logits - theirs).abs().max() < 1e-4


def test_processor_and_generate_caption_an_image(exported):
    from transformers import AutoModelForCausalLM, AutoProcessor

    _, out, tokenizer = exported
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    inputs = processor(images=image, text="Describe the image.")
    assert inputs["pixel_values"].shape == (1, 3, IMAGE, IMAGE)
    calls = []
    conditioning = model.conditioning
    model.conditioning = lambda *a, **k: calls.append(1) or conditioning(*a, **k)
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    new = generated[0, inputs["input_ids"].shape[1]:]
    assert len(new) == 6
    assert len(calls) == 1  # the image is encoded once, at the first step, not per token
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)
    # generate() asks for the last position's logits only (the LM head on every prompt position
    # was most of a short answer's cost); they equal the full forward's last row
    head_rows = []
    model.language_model.lm_head.register_forward_hook(lambda m, i, o: head_rows.append(o.shape[1]))
    again = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(again, generated) and head_rows == [1] * 6
    with torch.no_grad():
        last = model(**inputs, logits_to_keep=1).logits
        full = model(**inputs).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)  # one row's GEMM vs many
    # the image is used at every step: a different image gives different greedy continuations or logits
    with torch.no_grad():
        a = model(**inputs).logits
        b = model(input_ids=inputs["input_ids"], pixel_values=_pixels(3)).logits
    assert (a - b).abs().max() > 1e-3


def test_image_text_to_text_pipeline_answers_from_the_image(exported):
    """The HF habits for a vision-language model: AutoModelForImageTextToText loads the export and
    pipeline("image-text-to-text") answers a chat with an image exactly as the manual path does
    (apply_chat_template -> processor -> generate), reading the image once."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    _, out, _ = exported
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__ == "ParamVisionForCausalLM"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is in the image?"}]}]
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    expected = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    pipe = pipeline("image-text-to-text", model=str(out), trust_remote_code=True)
    calls = []
    conditioning = pipe.model.conditioning
    pipe.model.conditioning = lambda *a, **k: calls.append(1) or conditioning(*a, **k)
    answer = pipe(text=messages, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert answer[0]["generated_text"][-1] == {"role": "assistant", "content": expected}
    assert len(calls) == 1  # the pipeline handed the image to the model


@pytest.mark.parametrize("exported", ["rose"], indirect=True)
def test_rose_generation_builds_rotations_at_prefill_like_building_them_per_step(exported, monkeypatch):
    """Batched generation with different images: the rotations built once at prefill and reused
    for every token give what rebuilding them from the images before every step gives, and each
    sample decodes as it would alone."""
    import sys

    from transformers import AutoModelForCausalLM

    _, out, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(0, 151665, (2, 10), generator=torch.Generator().manual_seed(4))
    px = torch.cat([_pixels(0), _pixels(5)])
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, output_scores=True,
              return_dict_in_generate=True, pad_token_id=0)
    calls = []
    conditioning = hf.conditioning
    monkeypatch.setattr(hf, "conditioning", lambda *a, **k: calls.append(1) or conditioning(*a, **k))
    once = hf.generate(input_ids=ids, pixel_values=px, **kw)
    assert len(calls) == 1
    # the reference: every step treated as the image's first, so the rotations are rebuilt each time
    monkeypatch.setattr(sys.modules[type(hf).__module__], "_is_prefill", lambda *a: True)
    per_step = hf.generate(input_ids=ids, pixel_values=px, **kw)
    assert len(calls) == 1 + 5
    assert torch.equal(once.sequences, per_step.sequences)
    for a, b in zip(once.scores, per_step.scores):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    monkeypatch.undo()
    for i in range(2):  # each sample as if alone: its own image's rotations, not its neighbour's
        alone = hf.generate(input_ids=ids[i:i + 1], pixel_values=px[i:i + 1], **kw)
        assert torch.equal(alone.sequences[0], once.sequences[i])
        for a, b in zip(alone.scores, once.scores):
            torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def exported_vora(tmp_path_factory):
    from transformers import SiglipImageProcessorPil

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model, resolve_preset
    from recaption.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    preset = json.loads(json.dumps(resolve_preset("tiny-vora")))
    preset["llm"]["vocab_size"] = 151680
    torch.manual_seed(0)
    model = build_model(preset, method="vora", backend="local")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking adapters, so the merge at export has work to do
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    # the Megatron reference, before export merges the LoRA in place: 16 image tokens then text
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = torch.randint(0, 151643, (2, 6), generator=torch.Generator().manual_seed(2))
    ids = torch.cat([torch.full((2, 16), image_token), text], dim=1)
    images = [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    image_ids = torch.cat([torch.arange(2)[:, None].expand(2, 16), torch.full((2, 6), -1)], dim=1)
    with torch.no_grad():
        ref = model(ids, torch.arange(22).expand(2, 22), None, images=images, image_ids=image_ids)
    out = tmp_path_factory.mktemp("export") / "vora-tiny"
    export_model(model, preset["llm"], out, tokenizer, SiglipImageProcessorPil(size={"height": 16, "width": 16}),
                 max_shard_size="5MB")
    return out, ids, images, ref[..., :151665]


def test_vora_export_is_merged_and_equals_megatron(exported_vora):
    from transformers import AutoModelForCausalLM, AutoProcessor

    out, ids, images, ref = exported_vora
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not any("lora" in k for k in index["weight_map"])  # LoRA folded into the weights
    assert any(k.startswith("vision_embedding.") for k in index["weight_map"])
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=ids, pixel_values=torch.stack(images)).logits
    assert (logits - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="nothing to merge"):
        hf.merge_vision(torch.stack(images[:1]))
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    inputs = processor(images=image, text="Describe the image.")
    assert int((inputs["input_ids"] == hf.config.injection["image_token_id"]).sum()) == 16
    generated = hf.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    # the chat path, tokenised by the processor: the same placeholders in front of the prompt
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Describe the image."}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert torch.equal(chat["input_ids"], processor(images=image, text=prompt)["input_ids"])
    assert int((chat["input_ids"] == hf.config.injection["image_token_id"]).sum()) == 16
