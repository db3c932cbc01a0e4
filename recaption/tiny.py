"""Build captioner checkpoints offline: the real Qwen2.5 tokenizer from dashscope's qwen.tiktoken
(no hub access), and a tiny randomly initialised Qwen2.5-VL for tests and the demo. Its captions
are gibberish by construction; it exercises exactly the code path a real checkpoint takes.

    python -m recaption.tiny --out runs/tiny-qwen25vl
"""
from __future__ import annotations

import argparse
import os

# Qwen2's pre-tokenizer split (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5(-VL) special tokens, ids 151643.. in this order; <|image_pad|> lands on 151655.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>"]
VOCAB_SIZE = 151_936  # Qwen2.5-VL's embedding rows (151,665 ids, padded)


def qwen_tiktoken_file() -> str:
    import importlib.util

    spec = importlib.util.find_spec("dashscope")
    if spec is None:
        raise FileNotFoundError("the Qwen2.5 vocabulary comes from the `dashscope` wheel: "
                                "pip install --no-deps dashscope==2.0.2 (scripts/setup.sh does)")
    path = os.path.join(os.path.dirname(spec.origin), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing from the installed dashscope wheel")
    return path


def build_tokenizer():
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=qwen_tiktoken_file(), pattern=QWEN2_PATTERN,
                            extra_special_tokens=SPECIAL_TOKENS).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", clean_up_tokenization_spaces=False)
    assert fast.convert_tokens_to_ids("<|image_pad|>") == 151655, "Qwen2.5 special-token ids are off"
    return fast


def tiny_config(head_dim: int = 16):
    """head_dim 16 keeps CPU tests fast; vLLM's CPU and FlashAttention backends need >= 32."""
    from transformers import Qwen2_5_VLConfig

    if head_dim % 16:
        raise ValueError(f"head_dim={head_dim}: a multiple of 16 (M-RoPE splits head_dim / 2 as 2:3:3)")
    h = head_dim
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=4 * h, intermediate_size=8 * h, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [h // 8, 3 * h // 16, 3 * h // 16]},  # sums to head_dim / 2
                         tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645),
        vision_config=dict(depth=2, hidden_size=2 * h, intermediate_size=4 * h, num_heads=2, out_hidden_size=4 * h,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,  # tied, a random model just echoes its last input token
    )


def build_tiny_captioner(out_dir: str, seed: int = 0, max_pixels: int = 112 * 112, head_dim: int = 16) -> str:
    """Save tokenizer + image processor + random tiny Qwen2.5-VL to out_dir; returns out_dir."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(head_dim)).eval()
    model.generation_config = GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643)
    model.save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels).save_pretrained(out_dir)
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-dim", type=int, default=16, help="attention head size (vLLM needs >= 32)")
    a = p.parse_args(argv)
    print(build_tiny_captioner(a.out, a.seed, head_dim=a.head_dim))


if __name__ == "__main__":
    main()
