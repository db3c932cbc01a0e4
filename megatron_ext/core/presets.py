"""Model presets (configs/model/*.yaml): the LLM shape, the vision width and one section per
method (rose:, vlora:, ...; each method's package reads its own)."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
_LLM_KEYS = {"num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
             "num_query_groups", "kv_channels", "vocab_size", "max_position_embeddings",
             "rope_theta", "norm_eps", "tie_word_embeddings"}


def load_preset(name_or_path: str) -> dict:
    """A preset by name ('tiny', 'qwen2.5-7b-rose') or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):  # 'qwen2.5-7b-rose' has a dot but is a name
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"model preset '{name_or_path}' not found; known presets: {known}")
    preset = yaml.safe_load(path.read_text())
    if "base" in preset:  # `base: tiny` + the keys that differ: a variant without a copy
        preset = _merged(load_preset(str(preset.pop("base"))), preset)
    unknown = set(preset.get("llm", {})) - _LLM_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown llm keys {sorted(unknown)}; known: {sorted(_LLM_KEYS)}")
    return preset


def resolve_preset(preset) -> dict:
    """A preset dict, a name under configs/model ('qwen2.5-7b-vora') or a path to a YAML file."""
    return preset if isinstance(preset, dict) else load_preset(str(preset))


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
