"""`python -m megatron_ext.export --checkpoint ...` on checkpoints written by TP=2 and PP=2 training
runs: the export (loaded at TP=1, PP=1 through dist_checkpointing's resharding) holds exactly the
trained model's weights (the TP shards gathered, the pipeline stages joined: the TP=1 model), and
transformers loads it."""

import functools
import subprocess
import sys

import pytest
import torch

from distributed import run_distributed_each

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
IMAGE = 32
LAYOUTS = {"tp2": "parallel.tensor=2", "pp2": "parallel.pipeline=2"}


def _train(rank, run_dir, layout):
    """Train S1 at `layout`; return this rank's parameters as the TP=1, PP=1 model names them:
    TP shards gathered, decoder layers renumbered globally (the caller joins the stages)."""
    from megatron.core import parallel_state

    from megatron_ext.core.specs import stage_layers
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    cfg = load_config(str(ROOT / "configs/train/s1-rose-tiny.yaml"),
                      [f"log.run_dir={run_dir}", "log.wandb=false", layout, "train.steps=3",
                       "checkpoint.every=3", "optim.warmup_steps=1"])
    model = run(cfg, keep_model=True)["model"]
    offset = stage_layers(model.config)[0] - 1
    full = {}
    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    for name, p in model.named_parameters():  # the full tensors, gathered from the TP shards
        if tp > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(p.data) for _ in range(tp)]
            torch.distributed.all_gather(parts, p.data.contiguous(), group=group)
            stride = getattr(p, "partition_stride", 1)
            pieces = [t.chunk(stride, dim=p.partition_dim) for t in parts]
            p_full = torch.cat([pieces[r][s] for s in range(stride) for r in range(tp)], dim=p.partition_dim)
        else:
            p_full = p.data.clone()
        if ".decoder.layers." in name:  # this stage's local layer index -> the global one
            head, rest = name.split(".decoder.layers.")
            index, tail = rest.split(".", 1)
            name = f"{head}.decoder.layers.{int(index) + offset}.{tail}"
        full[name] = p_full
    return full


def _joined(ranks):
    """The full trained weights: TP ranks hold the same full tensors; pipeline stages are joined."""
    full = {}
    for r in ranks:
        for name, t in r.items():
            assert name not in full or torch.equal(full[name], t), name
            full[name] = t
    return full


def _assets(root):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    # the frozen encoder the synthetic S1 features stand for, and a tokenizer within the tiny vocab
    SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=IMAGE, patch_size=8)
                      ).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(root / "siglip")
    tok = Tokenizer(models.WordLevel({**{f"w{i}": i for i in range(200)}, "[UNK]": 200}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(root / "tok")


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Both layouts trained in one spawn of the two processes: {layout: (root, full weights)}."""
    roots = {name: tmp_path_factory.mktemp(name) for name in LAYOUTS}
    ranks = run_distributed_each({name: functools.partial(_train, run_dir=str(roots[name] / "run"), layout=layout)
                                  for name, layout in LAYOUTS.items()})
    for root in roots.values():
        _assets(root)
    return {name: (roots[name], _joined(ranks[name])) for name in LAYOUTS}


@pytest.fixture(params=list(LAYOUTS))
def trained_run(request, trained_runs):
    return trained_runs[request.param]


def test_export_cli_from_a_tp2_or_pp2_checkpoint_holds_the_trained_weights(trained_run):
    from safetensors.torch import load_file

    from megatron_ext.hf.decoder import megatron_to_hf
    from megatron_ext.core.llm_config import qwen2_transformer_config
    from megatron_ext.core.presets import load_preset

    root, full = trained_run
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
    # the model card: the run's stage and steps, from its config.yaml and metrics.jsonl
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "method: `rose`" in card
    assert "| s1 | 3 / 3 | 8 |" in card and str(root / "run") in card


# a Python start with Megatron's imports for one line: tests/errors/test_export_errors.py::test_export_mistake
# [no-checkpoint-inside] asserts this line (and its exit code 2) from the same CLI main, and the
# test above runs `python -m megatron_ext.export` itself
@pytest.mark.slow
def test_export_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "megatron_ext.export", "--checkpoint", str(tmp_path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and f"no complete checkpoint under {tmp_path}" in r.stderr
