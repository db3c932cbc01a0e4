"""Captioner pieces: the offline Qwen2.5 tokenizer, backend choice, vLLM request building,
retry-then-record, and a clear error for a missing checkpoint."""
import importlib.util

import pytest
from PIL import Image

from pipeline.config import RecaptionConfig
from recaption.base import CaptionResult, Captioner, build_captioner, caption_with_retries, select_backend
from recaption.prompts import chat_prompt, instruction
from recaption.vllm_backend import build_requests, engine_kwargs, sampling_kwargs


def test_offline_qwen25_tokenizer_matches_qwen_ids():
    from recaption.tiny import build_tokenizer

    tok = build_tokenizer()
    assert len(tok) == 151_665
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                      "<|image_pad|>", "<|file_sep|>"]) == [151643, 151644, 151645, 151652,
                                                                             151655, 151664]
    assert tok.encode("Hello world") == [9707, 1879]  # Qwen2/2.5 ids for these words
    assert tok.encode("123") == [16, 17, 18]  # Qwen splits digits one by one
    ids = tok.encode(chat_prompt("Describe."))
    assert ids.count(151655) == 1 and tok.decode(ids) == chat_prompt("Describe.")


def test_backend_choice():
    has_vllm = importlib.util.find_spec("vllm") is not None
    if not has_vllm:
        assert select_backend("auto") == "transformers"
        with pytest.raises(ImportError, match="recaption.backend is 'vllm' but vllm is not installed"):
            select_backend("vllm")
    assert select_backend("transformers") == "transformers"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="captioner checkpoint directory not found: '/no/such/model'"):
        build_captioner(RecaptionConfig(model="/no/such/model"), "transformers")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_captioner(RecaptionConfig(model=str(tmp_path)), "transformers")


def test_vllm_requests_and_parameters():
    rc = RecaptionConfig(model="/models/qwen", max_new_tokens=77, temperature=0.0, top_p=0.5,
                         max_pixels=1000, min_pixels=10, seed=3)
    images = [Image.new("L", (20, 10)), Image.new("RGBA", (5, 5))]
    reqs = build_requests(images, [instruction("short"), instruction("alt_text_aware", "a red bus")])
    assert len(reqs) == 2
    for r in reqs:
        assert r["prompt"].count("<|image_pad|>") == 1 and r["prompt"].endswith("<|im_start|>assistant\n")
        assert r["multi_modal_data"]["image"].mode == "RGB"
    assert "one-sentence caption" in reqs[0]["prompt"] and '"a red bus"' in reqs[1]["prompt"]
    assert sampling_kwargs(rc) == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 77, "seed": 3}
    rc.temperature = 0.7
    assert sampling_kwargs(rc)["top_p"] == 0.5
    e = engine_kwargs(rc)
    assert e["model"] == "/models/qwen" and e["limit_mm_per_prompt"] == {"image": 1}
    assert e["mm_processor_kwargs"] == {"min_pixels": 10, "max_pixels": 1000}
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        build_requests(images, ["x"])


class _FlakyOnRed(Captioner):
    """A test double: fails any batch holding a red image, so retries must isolate it."""
    name = "flaky"

    def __init__(self):
        self.calls = 0

    def caption_batch(self, images, instructions):
        self.calls += 1
        if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
            raise RuntimeError("CUDA error: device-side assert")
        return [f"caption {im.size[0]}" for im in images]


def test_failure_is_retried_then_recorded():
    ims = [Image.new("RGB", (n, n), c) for n, c in [(4, "blue"), (5, "red"), (6, "green")]]
    cap = _FlakyOnRed()
    out = caption_with_retries(cap, ims, ["x"] * 3, retries=2)
    assert out[0] == CaptionResult("caption 4") and out[2] == CaptionResult("caption 6")
    assert out[1].caption is None and "device-side assert" in out[1].error
    assert cap.calls == 1 + 1 + 2 + 1  # batch, blue, red twice, green


def test_transformers_backend_captions_reproducibly(tiny_captioner):
    rc = RecaptionConfig(model=tiny_captioner, max_new_tokens=6, max_pixels=56 * 56 * 4)
    c = build_captioner(rc, "transformers")
    ims = [Image.new("RGB", (80, 60), (i * 60, 100, 200 - i * 50)) for i in range(3)]
    a = c.caption_batch(ims, [instruction("detailed")] * 3)
    assert a == c.caption_batch(ims, [instruction("detailed")] * 3)
    assert all(isinstance(x, str) and x for x in a)
