"""Checks that run before any stage starts (and before Ray or a model loads): the output folder,
the URL list, and the model directories of the stages about to run. A mistake found here costs
nothing; found after the download it costs the download."""
from __future__ import annotations

import os

from pipeline.inputs import check_readable
from pvcommon.errors import ConfigError
from recaption.base import BackendUnavailable, check_model_dir, select_backend


def _model_dir(key: str, path) -> None:
    if not path or not os.path.isdir(path):
        raise ConfigError(f"{key}: checkpoint directory not found: {path!r} (a local model directory; "
                          f"nothing is fetched from a hub)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{key}: {path!r} has no config.json; not a model checkpoint")


def check(cfg, stages) -> None:
    """cfg: PipelineConfig; stages: the stage names about to run, in order."""
    out = cfg.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"output_dir: {out} is a file; set output_dir to a folder")
    if "download" in stages:
        check_readable(cfg.input)
    if "recaption" in stages:
        try:
            check_model_dir(cfg.recaption.model)
            select_backend(cfg.recaption.backend)
        except (FileNotFoundError, BackendUnavailable) as e:
            raise ConfigError(str(e)) from None
    if "filter" in stages and cfg.filter.clip.model:
        _model_dir("filter.clip.model", cfg.filter.clip.model)
