"""Tokenisation of (prompt, target) pairs in the chat format: the target is a caption (after
data.prompt) or, with data.task qa, the answer to a question; the loss falls on the target tokens
and the end-of-turn token only."""

from __future__ import annotations

import torch

from megatron_ext.hf.image_placeholder import image_placeholder


class ByteTokenizer:
    """Offline byte-level tokenizer for tests and the tiny configs (vocab 256). NUL pads and ETX
    ends a caption: control bytes that captions never contain."""

    vocab_size = 256
    pad_id = 0
    eos_id = 3
    image_id = 0  # VoRA's image placeholders (their embeddings are replaced by the image's)

    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode("utf-8") if b not in (self.pad_id, self.eos_id)]


class HFTokenizer:
    """A tokenizer from a local directory (transformers AutoTokenizer), e.g. Qwen2.5's; the caption
    is the assistant turn of the Qwen2.5 chat format, ended by <|im_end|>."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.vocab_size = len(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.eos_id = im_end if isinstance(im_end, int) and im_end >= 0 else self.tok.eos_token_id
        vocab = self.tok.get_vocab()
        self.chat = "<|im_start|>" in vocab
        # the image's placeholder (VoRA, LLaVA): the token the exported processor inserts
        self.image_id = vocab[image_placeholder(self.tok)]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def format_prompt(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def build_tokenizer(spec: str):
    return ByteTokenizer() if spec == "bytes" else HFTokenizer(spec)


def encode_pair(tok, prompt: str, caption: str, seq_length: int, image_tokens: int = 0) -> dict:
    """input_ids, labels, loss_mask of length seq_length (truncated or padded). With image_tokens
    (VoRA: the image enters the sequence), that many image placeholders precede the text, the
    sequence is image_tokens + seq_length long, and `image_mask` marks them; they carry no loss."""
    prompt_text = tok.format_prompt(prompt) if hasattr(tok, "format_prompt") else prompt
    p = tok.encode(prompt_text) if prompt_text else []
    c = tok.encode(caption) + [tok.eos_id]
    ids = (p + c)[: seq_length + 1]
    target = [0] * len(p) + [1] * len(c)
    target = target[: seq_length + 1]
    pad = seq_length + 1 - len(ids)
    ids = ids + [tok.pad_id] * pad
    target = target + [0] * pad
    ids = [tok.image_id] * image_tokens + ids  # the last placeholder predicts the first text token
    target = [0] * image_tokens + target
    ids = torch.tensor(ids, dtype=torch.long)
    out = dict(input_ids=ids[:-1], labels=ids[1:], loss_mask=torch.tensor(target[1:], dtype=torch.float32))
    if image_tokens:
        out["image_mask"] = torch.arange(len(ids) - 1) < image_tokens
    return out
