"""Stage 2: new captions with a Qwen2.5-VL captioner in a Ray Data actor pool (one model per
actor, one actor per GPU), written beside the alt-text with the captioner's name and prompt.

    ray job submit --working-dir . -- python pipeline/recaption.py --config configs/data/demo_tiny.yaml

Work is cut into fixed chunks of `batch_size` samples of one shard, so a batch holds the same
samples whether or not the run was resumed, and captions are reproducible. The driver writes an
output shard (atomically) as soon as all its chunks are back; a re-run skips finished shards."""
from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections import defaultdict

if __package__ in (None, ""):  # run as a script (ray job submit ... python pipeline/recaption.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import accounting  # noqa: E402
from pipeline.cli import stage_main  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.fsio import iter_tar, read_at, remove_stale_temps, shard_name, tar_index, write_tar_atomic  # noqa: E402
from pipeline.ray_setup import init_ray  # noqa: E402
from pipeline.samples import parse, sample_key  # noqa: E402
from pipeline.stage_io import RECAPTION, guard_settings, previous_decisions, settings, source_shards  # noqa: E402
from recaption.base import (CaptionResult, EngineDead, caption_with_retries, captioner_name,  # noqa: E402
                            check_model_dir, restart_actor, select_backend, vllm_python)
from recaption.factory import build_captioner  # noqa: E402
from recaption.placement import actor_options  # noqa: E402
from recaption.prompts import instruction, resolve_prompt  # noqa: E402

log = logging.getLogger(__name__)


def load_chunk(row: dict) -> dict:
    """Ray Data map: read one chunk's images and alt-texts from its shard (no decoding here)."""
    keys = json.loads(row["keys"])
    index = tar_index(row["shard"])
    images, alts = [], []
    with open(row["shard"], "rb") as f:
        for k in keys:
            fields = {e: read_at(f, *index[k][e]) for e in index[k]}
            s = parse(k, fields)
            images.append(s["image"] or b"")
            alts.append(s["alt_text"])
    return {"shard": row["shard"], "keys": row["keys"], "images": images, "alts": alts}


class CaptionActor:
    """Holds one captioner for its lifetime; Ray Data feeds it one chunk per call."""

    def __init__(self, rc, backend: str):
        self.rc = rc
        self.captioner = build_captioner(rc, backend)

    def __call__(self, batch: dict) -> dict:
        try:
            return self._caption(batch)
        except EngineDead as e:  # a fresh process and engine retry this chunk
            restart_actor(e)

    def _caption(self, batch: dict) -> dict:
        from PIL import Image

        out = defaultdict(list)
        for shard, keys, images, alts in zip(batch["shard"], batch["keys"], batch["images"], batch["alts"]):
            keys = json.loads(keys)
            decoded, ok = [], []
            for b in images:
                try:
                    decoded.append(Image.open(io.BytesIO(b)).convert("RGB"))
                    ok.append(True)
                except Exception:  # noqa: BLE001 - recorded per sample below
                    ok.append(False)
            results = caption_with_retries(self.captioner, decoded,
                                           [instruction(self.rc.prompt, a) for a, g in zip(alts, ok) if g],
                                           self.rc.retries) if decoded else []
            it = iter(results)
            for key, good in zip(keys, ok):
                r = next(it) if good else CaptionResult(None, "decode_error")
                out["shard"].append(shard)
                out["key"].append(key)
                out["caption"].append(r.caption if r.caption is not None else "")
                out["error"].append(r.error or "")
        return dict(out)


def plan_chunks(shard: str, batch_size: int, want: set) -> tuple:
    """-> (chunks of keys in tar order, number of samples). Only samples the download passed."""
    keys = []
    index = tar_index(shard)  # headers only: the driver never reads the images
    with open(shard, "rb") as f:
        for key, members in index.items():
            s = parse(key, {e: read_at(f, *members[e]) for e in members if e == "json"})
            if s is not None and s["uid"] in want:
                keys.append(key)
    return [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)], len(keys)


def _paths(cfg, shard: str):
    base = os.path.join(cfg.stage_dir(RECAPTION), shard_name(shard))
    return base + ".tar", base + ".decisions.parquet"


def finish_shard(cfg, shard: str, results: dict, want: set, backend: str) -> None:
    """Write one output shard and its decisions from the input shard plus its captions."""
    rc = cfg.recaption

    samples, rows = [], []
    for key, fields, problem in iter_tar(shard):
        s = None if problem else parse(key, fields)
        if s is None or s["uid"] not in want:
            continue
        caption, error = results[key]
        if error:
            log.warning("recaption: uid %d failed: %s", s["uid"], error)
            rows.append((s["uid"], "recaption", accounting.DROP,
                         "decode_error" if error == "decode_error" else "recaption_failed"))
            continue
        meta = dict(s["meta"], alt_text=s["alt_text"], caption=caption, captioner=captioner_name(rc),
                    captioner_backend=backend, prompt=resolve_prompt(rc.prompt))
        samples.append((sample_key(s["uid"]), {"jpg": s["image"], "txt": s["alt_text"].encode("utf-8"),
                                               "json": json.dumps(meta, sort_keys=True).encode()}))
        rows.append((s["uid"], "recaption", accounting.PASS, ""))
    tar, dec = _paths(cfg, shard)
    write_tar_atomic(tar, samples)
    accounting.write(dec, rows)  # written last: a shard is finished when its decisions exist


def _cluster_gpus(cfg) -> float:
    """GPUs of the Ray cluster the actors will run on (the driver may sit on a CPU node)."""
    import ray

    init_ray(cfg.ray)
    return float(ray.cluster_resources().get("GPU", 0))


def run(cfg: PipelineConfig) -> pd.DataFrame:
    import ray


    rc = cfg.recaption
    check_model_dir(rc.model)
    python = vllm_python(rc.vllm.python)
    cluster_gpus = _cluster_gpus(cfg) if rc.backend == "auto" or rc.num_gpus_per_actor is None else 0.0
    backend = select_backend(rc.backend, cluster_gpus, python)
    want = accounting.passed(previous_decisions(cfg, "recaption"))
    shards = source_shards(cfg, "recaption")
    # Captions are expensive: a resume with another model or prompt is refused, not mixed in.
    guard_settings(cfg.stage_dir(RECAPTION), "recaption",
                   dict(settings(cfg, "recaption", ("num_actors", "num_gpus_per_actor", "vllm")), backend=backend))
    remove_stale_temps(cfg.stage_dir(RECAPTION))
    todo = [s for s in shards if not all(os.path.exists(p) for p in _paths(cfg, s))]
    log.info("recaption: backend=%s (requested %s), model=%s, prompt=%r, %d actors x batch %d; "
             "%d shards, %d finished earlier", backend, rc.backend, rc.model, rc.prompt, rc.num_actors,
             rc.batch_size, len(shards), len(shards) - len(todo))
    units, expected = [], {}
    for s in todo:
        chunks, n = plan_chunks(s, rc.batch_size, want)
        expected[s] = n
        units += [{"shard": s, "keys": json.dumps(c)} for c in chunks]
    for s in [s for s in todo if expected[s] == 0]:
        finish_shard(cfg, s, {}, want, backend)
    if units:
        init_ray(cfg.ray)
        ray.data.DataContext.get_current().enable_progress_bars = False  # tqdm below tracks shards
        ds = (ray.data.from_items(units, override_num_blocks=max(1, min(len(units), 200)))
              .map(load_chunk)
              .map_batches(CaptionActor, fn_constructor_kwargs={"rc": rc, "backend": backend}, batch_size=1,
                           compute=ray.data.ActorPoolStrategy(size=rc.num_actors),
                           **actor_options(rc, backend, cluster_gpus, python)))
        got = defaultdict(dict)
        bar = tqdm(total=sum(expected.values()), desc="recaption", unit="img")
        for row in ds.iter_rows():
            got[row["shard"]][row["key"]] = (row["caption"], row["error"])
            bar.update(1)
            if len(got[row["shard"]]) == expected[row["shard"]]:
                finish_shard(cfg, row["shard"], got.pop(row["shard"]), want, backend)
        bar.close()
        if got:
            raise RuntimeError(f"recaption: incomplete results for shards {sorted(got)}")
    frames = [accounting.read([_paths(cfg, s)[1]]) for s in shards]
    decisions = pd.concat(frames, ignore_index=True) if frames else accounting.table([]).to_pandas()
    missing = sorted(want - set(decisions.uid))
    if missing:
        decisions = pd.concat([decisions, accounting.table(
            [(int(u), "recaption", accounting.DROP, "missing_from_shard") for u in missing]).to_pandas()])
    accounting.write(os.path.join(cfg.stage_dir(RECAPTION), "decisions.parquet"),
                     decisions.sort_values("uid").itertuples(index=False))
    log.info("recaption: %d captioned, %d dropped", (decisions.decision == accounting.PASS).sum(),
             (decisions.decision == accounting.DROP).sum())
    return decisions


def main(argv=None):
    stage_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
