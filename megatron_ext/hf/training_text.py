"""What an export was trained on, written into its config.json (`paramvision_training`): the data
task and the user turn before a caption (data.prompt), so that the evaluation prompts a caption
exactly as training did without being told (python -m megatron_ext.evaluate reads it back)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_ext.hf.safetensors_dir import make_readable

KEY = "paramvision_training"


def record(out_dir: str | Path, data) -> None:
    """data: the run's data section. Also leaves every file of the folder readable (0644)."""
    path = Path(out_dir) / "config.json"
    config = json.loads(path.read_text())
    config[KEY] = {"task": data.task, "prompt": data.prompt, "image_size": data.image_size}
    path.write_text(json.dumps(config, indent=2))
    make_readable(out_dir)


def read(folder: str | Path) -> dict:
    """{task, prompt, image_size} of an export; {} for one written before they were recorded."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()).get(KEY, {}) if path.is_file() else {}
