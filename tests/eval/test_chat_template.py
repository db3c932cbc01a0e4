"""Exports carry the training prompt format as their chat template, so the standard transformers
path (apply_chat_template -> processor(images=, text=) -> generate, what lmms-eval's generic chat
model runs) prompts them exactly as training did, with no image placeholder for ROSE."""

import pytest
import torch
from PIL import Image

from megatron_ext.data.text import HFTokenizer
from megatron_ext.hf.chat_template import CHATML, PLAIN, chat_template

QUESTION = "what color is the shape?"
MESSAGES = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64))},
                                         {"type": "text", "text": QUESTION}]}]


@pytest.fixture(scope="module")
def processor(blind_export):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(blind_export, trust_remote_code=True)


def test_the_template_renders_the_training_prompt_format(blind_export, processor):
    rendered = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == HFTokenizer(str(blind_export)).format_prompt(QUESTION)
    # the tokenizer carries the same template (chat_template.jinja serves both)
    assert processor.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == rendered
    # a finished turn closes with <|im_end|>, as the caption/answer was scored in training
    done = processor.apply_chat_template(MESSAGES + [{"role": "assistant", "content": "red"}], tokenize=False)
    assert done == rendered + "red<|im_end|>\n"


def test_tokenized_chat_path_gives_the_processor_inputs(blind_export, processor):
    """apply_chat_template(..., tokenize=True, return_dict=True) with an image: the rendered
    prompt's own tokens (no BOS, no placeholder for ROSE) and the image's pixel values, the
    inputs generate takes."""
    from transformers import AutoModelForImageTextToText

    inputs = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    rendered = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert inputs["input_ids"][0].tolist() == processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    image = MESSAGES[0]["content"][0]["image"]
    assert torch.equal(inputs["pixel_values"], processor.image_processor(image, return_tensors="pt")["pixel_values"])
    model = AutoModelForImageTextToText.from_pretrained(blind_export, trust_remote_code=True).eval()
    out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_plain_template_for_a_tokenizer_without_chat_tokens():
    class NoChat:
        def get_vocab(self):
            return {"a": 0}

    assert chat_template(NoChat()) == PLAIN and CHATML != PLAIN


def test_processor_inserts_no_placeholder_for_rose_and_generates(blind_export, processor):
    from transformers import AutoModel

    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    inputs = processor(images=images, text=[text, text], padding=True, return_tensors="pt", videos=[], audios=[])
    expected = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0].tolist() == expected  # the prompt's own tokens, nothing inserted
    assert inputs["pixel_values"].shape[0] == 2
    # lmms-eval loads a model type it does not know with AutoModel
    model = AutoModel.from_pretrained(blind_export, trust_remote_code=True, dtype=torch.float32).eval()
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, len(expected) + 3)


def test_processor_refuses_what_it_cannot_read(processor):
    with pytest.raises(ValueError, match="images only"):
        processor(text=["x"], videos=["clip.mp4"])
    with pytest.raises(ValueError, match="one image per text: got 1 images for 2 texts"):
        processor(images=[Image.new("RGB", (8, 8))], text=["a", "b"])
