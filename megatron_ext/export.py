"""Export to a Hugging Face folder that `transformers` loads with trust_remote_code.

The folder holds config.json (auto_map to the modeling code shipped beside it), sharded
safetensors with an index, tokenizer and processor files, and generation_config.json. Only torch
and transformers are needed to load it: the modeling code (megatron_ext/hf/remote) and the
pure-PyTorch files of the methods it builds on (SHIPPED) are copied in.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from megatron.core import parallel_state
from transformers import (AutoImageProcessor, AutoTokenizer, GenerationConfig,
                          SiglipImageProcessorPil)

from megatron_ext.core.vlm import VisionLanguageModel
from megatron_ext.data.loader import pixel_stats
from megatron_ext.hf.decoder import hf_text_config, megatron_to_hf
from megatron_ext.hf.chat_template import chat_template
from megatron_ext.hf import training_text
from megatron_ext.methods import MethodSpec, get_method
from megatron_ext.methods.training import build_training_model
from megatron_ext.model_card import run_config_dir, write_model_card
from megatron_ext.parallel import init_parallel
from megatron_ext.training.checkpoint import latest, load_weights
from megatron_ext.training.config import load_config
from megatron_ext.vision_tower import VisionTower
from pvcommon.argparser import ArgumentParser
from pvcommon.errors import UsageError, run_cli

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
# the shared modeling code and the pure-PyTorch files of every method it imports
SHIPPED = [HERE / "hf" / "remote" / "configuration_paramvision.py",
           HERE / "hf" / "remote" / "modeling_paramvision.py",
           HERE / "hf" / "remote" / "processing_paramvision.py",
           HERE / "methods" / "rose" / "rotation.py", HERE / "methods" / "rose" / "vrmg.py",
           HERE / "methods" / "vlora" / "vlora_generator.py",
           HERE / "methods" / "vora" / "vora_embedding.py",
           HERE / "hf" / "efficientnet.py"]  # the EfficientNet-Lite tower (not in transformers)
AUTO_MAP = {"AutoConfig": "configuration_paramvision.ParamVisionConfig",
            "AutoModelForCausalLM": "modeling_paramvision.ParamVisionForCausalLM",
            # lmms-eval's generic chat model loads a model_type it does not know with AutoModel
            "AutoModel": "modeling_paramvision.ParamVisionForCausalLM",
            # pipeline("image-text-to-text") and the HF habit for vision-language models
            "AutoModelForImageTextToText": "modeling_paramvision.ParamVisionForCausalLM"}


def export_model(model, llm: dict, out_dir: str | Path, tokenizer, image_processor,
                 max_shard_size: str = "2GB", max_new_tokens: int = 64, overwrite: bool = False,
                 run_dir: str | Path | None = None, evaluation: str | Path | None = None,
                 spec: MethodSpec | None = None) -> Path:
    """Write a model built at TP=1, PP=1 with its weights loaded as a HF folder: what the training
    loop ran (e.g. a VisionLanguageModel around ROSE or VLoRA) or a bare LLM, as its method's
    spec exports it (VoRA merges its LoRA into the base weights first, in place, as the paper
    deploys it). A non-empty out_dir is refused unless overwrite (megatron_ext/export_dir.py).
    The folder's README.md is its model card (megatron_ext/model_card.py): run_dir, the run the
    weights come from, says what was trained on what; evaluation, a results.json, how it scored."""
    from megatron_ext.export_dir import ExportTarget, check_target

    check_target(out_dir, overwrite)
    if parallel_state.get_tensor_model_parallel_world_size() * \
            parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("export from a TP=1, PP=1 model (distributed checkpoints reshard on load)")
    spec = spec or get_method(model.method)  # the caller's, where it resolved one
    if spec.export_native is not None:  # a class transformers has: its own folder, no remote code
        out = spec.export_native(model, llm, out_dir, tokenizer, image_processor, max_shard_size, max_new_tokens)
        if out is not None:  # None: a part transformers lacks; the remote-code folder below
            write_model_card(out, spec.name, run_dir, evaluation)
            return out
    if spec.export is None:
        raise ValueError(f"method {spec.name} has no Hugging Face export yet")
    part = spec.export(model, tokenizer)
    lm, tower = part.lm, part.tower
    hf_vocab = len(tokenizer)
    if hf_vocab > llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {hf_vocab} ids but the model's vocabulary is {llm['vocab_size']}")
    target = ExportTarget(out_dir, overwrite)
    out = target.staging  # moved into out_dir by target.commit()

    state = megatron_to_hf(lm.language_model.state_dict(), lm.config, hf_vocab, prefix="language_model.")
    state.update(part.state)
    if tower is not None:
        state.update({f"vision_tower.{k}": v.detach().clone() for k, v in tower.model.state_dict().items()})
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)

    for f in [*SHIPPED, *part.files]:
        shutil.copy2(f, out / f.name)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    config = {
        "architectures": ["ParamVisionForCausalLM"], "model_type": "paramvision", "auto_map": AUTO_MAP,
        "method": spec.name, "feature_layer": tower.feature_layer if tower else None, "dtype": dtype,
        "text_config": hf_text_config(llm, hf_vocab, dtype).to_dict(),  # Qwen2 or Llama (llm.architecture)
        "vision_config": tower.model.config.to_dict() if tower else None,
        "injection": part.injection,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = copy.deepcopy(tokenizer)  # the caller's keeps its own template
    # chat_template.jinja: the training prompt format, read by the tokenizer and the processor
    tokenizer.chat_template = chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    processor = {"processor_class": "ParamVisionProcessor",
                 "auto_map": {"AutoProcessor": "processing_paramvision.ParamVisionProcessor"}}
    processor.update(part.processor)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    eos = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos,
                     max_new_tokens=max_new_tokens, do_sample=False).save_pretrained(out)
    out = target.commit()
    write_model_card(out, spec.name, run_dir, evaluation)
    log.info("exported %d tensors to %s", len(state), out)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | None = None,
                      image_processor_dir: str | None = None, vision_dir: str | None = None,
                      max_shard_size: str = "2GB", overwrite: bool = False,
                      evaluation: str | Path | None = None) -> Path:
    """A training checkpoint (any TP/PP layout; dist checkpoints reshard on load) -> a HF folder.

    Rebuilds the run's model from its resolved config.yaml at TP=1, PP=1 in this process. A run
    trained on precomputed visual features (S1 with a frozen encoder) names the encoder they came
    from with `vision_dir`; a run with model.vision_weights has its own (trained) tower."""
    from megatron_ext.export_dir import check_target

    check_target(out_dir, overwrite)  # before anything is loaded
    for flag, value in (("--checkpoint", checkpoint), ("--tokenizer", tokenizer_dir),
                        ("--image-processor", image_processor_dir), ("--vision", vision_dir),
                        ("--evaluation", evaluation)):
        if value is not None and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or directory")
    path = latest(Path(checkpoint))
    if path is None:
        raise UsageError(f"--checkpoint: no complete checkpoint under {checkpoint}")
    run_dir = run_config_dir(path)
    if run_dir is None:
        raise UsageError(f"--checkpoint: no config.yaml beside {path} (a run directory holds the resolved config)")
    cfg = load_config(str(run_dir / "config.yaml"), ["parallel.tensor=1", "parallel.pipeline=1"])
    spec = get_method(cfg.model.method)
    takes_features = spec.inputs == "features"
    if not takes_features:  # its model.vision_weights is a training-time teacher, not part of the model
        cfg.model.vision_weights = None
    tokenizer_dir = tokenizer_dir or (cfg.data.tokenizer if Path(cfg.data.tokenizer).is_dir() else None)
    if tokenizer_dir is None:
        raise UsageError(f"the run tokenised with '{cfg.data.tokenizer}'; pass --tokenizer with a "
                         "Hugging Face tokenizer directory for the export")
    if takes_features and not (cfg.model.vision_weights or vision_dir):
        raise UsageError("the run trained on precomputed visual features and has no vision tower "
                         "(model.vision_weights): pass --vision with the encoder they came from")
    if cfg.data.kind == "synthetic" and not (image_processor_dir or vision_dir):
        raise UsageError("pass --image-processor: a directory with the image processor's "
                         "preprocessor_config.json")
    init_parallel(1, 1)
    preset, model = build_training_model(cfg, torch.float32, spec=spec)
    result = load_weights(path, model)
    if result["kept_at_init"]:
        raise ValueError(f"{path} lacks {len(result['kept_at_init'])} tensors of the model, e.g. "
                         f"{result['kept_at_init'][:3]}")
    if takes_features and not cfg.model.vision_weights:
        model = VisionLanguageModel(model, VisionTower.from_pretrained(vision_dir), model.all_equipped,
                                    train_vision=False)
    if cfg.data.kind != "synthetic":  # trained on pixels: export exactly the loader's preprocessing
        image_processor = training_image_processor(cfg, image_processor_dir, spec)
    else:  # trained on features: the encoder's own processor
        image_processor = AutoImageProcessor.from_pretrained(image_processor_dir or vision_dir)
    log.info("exporting %s (%s, step directory %s)", run_dir, cfg.model.method, path.name)
    out = export_model(model, preset["llm"], out_dir, AutoTokenizer.from_pretrained(tokenizer_dir),
                       image_processor, max_shard_size=max_shard_size, overwrite=overwrite,
                       run_dir=run_dir, evaluation=evaluation, spec=spec)
    training_text.record(out, cfg.data)  # the prompt the evaluation reads back; files 0644
    return out


def training_image_processor(cfg, given_dir: str | None = None, spec: MethodSpec | None = None):
    """The training loader's preprocessing as an image processor: resize to data.image_size
    (bicubic), scale to [0, 1], normalise with the loader's statistics (megatron_ext/data/loader.py
    pixel_stats: the tower's own; 0.5 for VoRA). A given processor that differs is reported and
    not used: the export must see images as training did."""
    mean, std = pixel_stats(cfg, spec)
    size = cfg.data.image_size
    ours = SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std))
    if given_dir is not None:
        given = AutoImageProcessor.from_pretrained(given_dir)
        same = (dict(getattr(given, "size", {}) or {}) == ours.size
                and list(given.image_mean) == list(mean) and list(given.image_std) == list(std)
                and not getattr(given, "do_center_crop", False))
        if not same:
            log.warning("%s preprocesses differently from the training loader (size %s, mean %s, std %s); "
                        "exporting the loader's preprocessing instead", given_dir,
                        getattr(given, "size", None), given.image_mean, given.image_std)
    return ours


def main(argv=None) -> None:
    ap = ArgumentParser(description="Export a training checkpoint to a Hugging Face folder "
                                             "(load with trust_remote_code=True).")
    ap.add_argument("--checkpoint", required=True, help="a run dir, its checkpoints/ dir or one step dir")
    ap.add_argument("--out", required=True, help="the folder to write")
    ap.add_argument("--tokenizer", help="HF tokenizer dir (default: the run's data.tokenizer)")
    ap.add_argument("--image-processor", help="dir with preprocessor_config.json (default: the run's "
                                              "vision tower dir)")
    ap.add_argument("--vision", help="the encoder of a run trained on precomputed features")
    ap.add_argument("--max-shard-size", default="2GB")
    ap.add_argument("--evaluation", help="results.json of python -m megatron_ext.evaluate, for the "
                                         "model card's scores (README.md)")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --out: replaces the files an export writes, keeps others")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = run_cli(export_checkpoint, args.checkpoint, args.out, args.tokenizer, args.image_processor,
                  args.vision, args.max_shard_size, args.overwrite, args.evaluation)
    print(f"exported to {out}: AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True)")


if __name__ == "__main__":
    main()
