"""`python -m megatron_ext.export --checkpoint ...` on a checkpoint written by a TP=2 training run:
the export (loaded at TP=1 through dist_checkpointing's resharding) holds exactly the TP=2 model's
weights, and transformers loads it."""

import subprocess
import sys

import pytest
import torch

from distributed import run_distributed

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
IMAGE = 32


def _train_tp2(rank, run_dir):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region  # noqa: F401

    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    cfg = load_config(str(ROOT / "configs/train/s1-rose-tiny.yaml"),
                      [f"log.run_dir={run_dir}", "log.wandb=false", "parallel.tensor=2", "train.steps=3",
                       "checkpoint.every=3", "optim.warmup_steps=1"])
    model = run(cfg, keep_model=True)["model"]
    full = {}
    group = parallel_state.get_tensor_model_parallel_group()
    for name, p in model.named_parameters():  # the full tensors, gathered from both TP shards
        if getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(p.data) for _ in range(2)]
            torch.distributed.all_gather(parts, p.data.contiguous(), group=group)
            stride = getattr(p, "partition_stride", 1)
            pieces = [t.chunk(stride, dim=p.partition_dim) for t in parts]
            p_full = torch.cat([pieces[r][s] for s in range(stride) for r in range(2)], dim=p.partition_dim)
        else:
            p_full = p.data.clone()
        full[name] = p_full
    return full


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("tp2")
    full = run_distributed(_train_tp2, world_size=2, run_dir=str(root / "run"))[0]
    # the frozen encoder the synthetic S1 features stand for, and a tokenizer within the tiny vocab
    SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=IMAGE, patch_size=8)
                      ).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(root / "siglip")
    tok = Tokenizer(models.WordLevel({**{f"w{i}": i for i in range(200)}, "[UNK]": 200}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(root / "tok")
    return root, full


def test_export_cli_from_a_tp2_checkpoint_holds_the_tp2_weights(tp2_run):
    from safetensors.torch import load_file

    from megatron_ext.hf.qwen2 import megatron_to_hf
    from megatron_ext.llm_config import qwen2_transformer_config
    from megatron_ext.presets import load_preset

    root, full = tp2_run
    out = root / "hf"
    subprocess.run([sys.executable, "-m", "megatron_ext.export", "--checkpoint", str(root / "run"),
                    "--out", str(out), "--tokenizer", str(root / "tok"), "--vision", str(root / "siglip")],
                   check=True, cwd=ROOT)
    exported = {}
    for f in out.glob("*.safetensors"):
        exported.update(load_file(f))
    config = qwen2_transformer_config(load_preset("tiny")["llm"])
    lm = {k.removeprefix("language_model."): v for k, v in full.items() if k.startswith("language_model.")}
    expected = megatron_to_hf(lm, config, hf_vocab_size=201, prefix="language_model.")
    expected.update({f"vrmg.{k.removeprefix('generator.')}": v for k, v in full.items()
                     if k.startswith("generator.")})
    assert set(expected) <= set(exported)
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name
    # the generator trained (S1): the export carries non-zero rotation heads
    assert any(exported[k].abs().max() > 0 for k in exported if ".to_T." in k)

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert model.config.method == "rose"


def test_export_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "megatron_ext.export", "--checkpoint", str(tmp_path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and f"no complete checkpoint under {tmp_path}" in r.stderr
