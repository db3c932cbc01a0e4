"""The real Qwen2.5 tokenizer (built offline, recaption.tiny) on the training path: batches
(data.tokenizer = its directory) put the loss on exactly the caption tokens of the Qwen2.5 chat
format, ended by <|im_end|>; VoRA's image placeholders (<|image_pad|>) come first and carry no
loss. Data only (the tiny VoRA config's loader, its 4x4 patch grid)."""

import pytest
import torch

from train_helpers import ROOT, qwen_tokenizer

PROMPT = "Describe the image."
CHAT = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return qwen_tokenizer(tmp_path_factory.mktemp("qwen") / "tok")


@pytest.mark.parametrize("method,image_tokens", [("rose", 0), ("vora", 16)])
def test_loss_mask_covers_exactly_the_caption_in_qwen_chat_format(qwen, tmp_path, method, image_tokens):
    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config
    from test_data import make_shards

    path, tok = qwen
    make_shards(tmp_path, n_shards=1, per_shard=4, corrupt=())
    # VoRA S1 batches; as ROSE/VLoRA (image in the weights), the same text layout
    cfg = load_config(str(ROOT / "configs" / "train" / "vora" / "s1-tiny.yaml"),
                      [f"data.tokenizer={path}", f"data.manifest={tmp_path}/manifest.json",
                       f"model.method={method}", f"data.prompt={PROMPT}", "data.seq_length=48"])
    preset = resolve_preset(cfg.model.preset)
    batch = build_loader(cfg, preset, 0, 1, get_method(cfg.model.method)).next_microbatch()
    seq = cfg.data.seq_length + image_tokens
    assert batch["input_ids"].shape == (cfg.train.micro_batch_size, seq)
    prompt = tok(CHAT)["input_ids"]
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id or tok.eos_token_id
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["loss_mask"]):
        image = ids[:image_tokens]
        assert (image == tok.convert_tokens_to_ids("<|image_pad|>")).all()
        assert ids[image_tokens:image_tokens + len(prompt)].tolist() == prompt
        text = tok.decode(ids[image_tokens + len(prompt):])
        caption = text.split("<|im_end|>")[0]
        assert caption.startswith("caption ")
        expected = tok(caption)["input_ids"] + [im_end]
        # the loss falls on exactly the caption and its end token: labels at masked positions
        assert labels[mask.bool()].tolist() == expected
        first = image_tokens + len(prompt) - 1  # the position that predicts the first caption token
        assert mask[:first].sum() == 0 and mask[first:first + len(expected)].all()
        assert mask[first + len(expected):].sum() == 0 and (labels[first + len(expected):] == pad).all()
    if image_tokens:
        assert torch.equal(batch["image_mask"], torch.arange(seq).expand_as(batch["image_mask"]) < image_tokens)
    else:
        assert "image_mask" not in batch  # ROSE/VLoRA batches are unchanged


def test_image_placeholder_is_one_id_no_text_holds(qwen, smollm2_dir):
    """Qwen2.5 has <|image_pad|>; SmolLM2 has none and lends <empty_output>: a single id that the
    chat format, the prompts and the answers never produce, the same for the loader and the export."""
    from transformers import AutoTokenizer

    from megatron_ext.data.text import HFTokenizer
    from megatron_ext.hf.image_placeholder import image_placeholder

    path, tok = qwen
    assert image_placeholder(tok) == "<|image_pad|>"
    small = AutoTokenizer.from_pretrained(smollm2_dir)
    token = image_placeholder(small)
    assert token == "<empty_output>" and len(small.encode(token, add_special_tokens=False)) == 1
    image_id = HFTokenizer(str(smollm2_dir)).image_id
    assert image_id == small.convert_tokens_to_ids(token)
    chat = "<|im_start|>user\nwhat is the color of the shape?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    assert image_id not in small.encode(chat, add_special_tokens=False)
    assert image_id not in (small.pad_token_id, small.eos_token_id)
