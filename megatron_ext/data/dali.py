"""NVIDIA DALI loader for the training shards: fn.readers.webdataset + image decode, resize and
normalise (on the GPU with device_id set: "mixed" decode; on the CPU with device_id=None).

Each DP rank reads its own part of the samples (shard_id = DP rank, num_shards = DP size); the
pipeline stages of one DP rank read the same samples, and only the first stage (the one with the
tower, teacher or patch embedding) decodes their images. The
reader's position is saved with DALI's pipeline checkpointing (enable_checkpointing), so a
resumed run continues where the saved one stood. Captions arrive as padded bytes and are
tokenised on the host. DALI is imported only when this loader is used.

Unlike the PIL loader, a sample whose image does not decode stops the DALI pipeline (DALI's
decoders have no skip-on-error); the data pipeline's image guard (pipeline/image_guard.py)
verifies decodability before sharding, and such a sample is a data bug, not noise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from megatron_ext.data.text import encode_pair
from megatron_ext.hf.vision_tower import MEAN, STD

log = logging.getLogger(__name__)


def _pipeline(tars, idxs, batch: int, image_size: int, shard_id: int, num_shards: int, seed: int,
              device_id: Optional[int], checkpoint: Optional[str], mean, std, decode: bool = True):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(enable_checkpointing=True)
    def wds():
        jpg, txt = fn.readers.webdataset(
            paths=tars, index_paths=idxs, ext=["jpg", "txt"], missing_component_behavior="skip",
            shard_id=shard_id, num_shards=num_shards, random_shuffle=True, initial_fill=256,
            seed=seed, pad_last_batch=False, stick_to_shard=True, name="reader")
        if not decode:  # the same reader (same samples, same order, same checkpoint), text only
            return fn.pad(txt, fill_value=0)
        images = fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=[255.0 * m for m in mean], std=[255.0 * s for s in std])
        return images, fn.pad(txt, fill_value=0)  # dense text bytes for the torch iterator

    kwargs = dict(batch_size=batch, num_threads=4, device_id=device_id, seed=seed)
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    pipe = wds(**kwargs)
    pipe.build()
    return pipe


class DaliLoader:
    def __init__(self, manifest: str, tokenizer, prompt: str, seq_length: int, image_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 device_id: Optional[int] = None, image_tokens: int = 0, mean=MEAN, std=STD,
                 decode: Optional[bool] = None):
        """decode: whether this rank needs the pixels; None: on the first pipeline stage only
        (the tower, teacher or patch embedding live there; later stages read the text alone)."""
        self.decode = _first_pipeline_stage() if decode is None else decode
        self.mean, self.std = mean, std  # the vision tower's pixel statistics (data.loader.pixel_stats)
        m = json.loads(Path(manifest).read_text())
        root = Path(manifest).parent
        self.tars = [str(root / e["tar"]) for e in m["shards"]]
        idxs = [root / e["idx"] for e in m["shards"] if e.get("idx")]
        self.idxs = [str(p) for p in idxs] if len(idxs) == len(self.tars) and all(p.is_file() for p in idxs) else None
        self.tok, self.prompt, self.seq, self.size = tokenizer, prompt, seq_length, image_size
        self.image_tokens = image_tokens  # VoRA: image placeholders before the text
        self.mbs, self.rank, self.dp, self.seed, self.device_id = micro_batch_size, dp_rank, dp_size, seed, device_id
        self.corrupt = 0  # DALI stops on an undecodable image (see the module docstring)
        self._checkpoint: Optional[str] = None
        self._pipe = None
        self._in_flight = None  # the last DALI output and the event after its copy (GPU)

    def _build(self):
        self._pipe = _pipeline(self.tars, self.idxs, self.mbs, self.size, self.rank, self.dp,
                               self.seed, self.device_id, self._checkpoint, self.mean, self.std,
                               decode=self.decode)
        log.info("DALI: %d shards, DP rank %d/%d, %s", len(self.tars), self.rank, self.dp,
                 ("GPU (mixed) decode" if self.device_id is not None else "CPU decode") if self.decode
                 else "text only (this pipeline stage reads no pixels)")

    def _pixels(self, images) -> torch.Tensor:
        """The batch is dense (every image resized alike): one DLPack hand-over where DALI decoded
        it (GPU with "mixed"), no host round trip; copied because DALI reuses its output buffers.
        On the GPU the copy is queued on torch's stream: DALI's tensor is kept until it has run
        (checked before DALI's next run may overwrite the buffer)."""
        dali_tensor = images.as_tensor()
        pixels = torch.from_dlpack(dali_tensor).clone()
        if pixels.is_cuda:
            done = torch.cuda.Event()
            done.record()
            self._in_flight = (dali_tensor, done)
        return pixels

    def next_microbatch(self) -> dict:
        if self._pipe is None:
            self._build()
        if self._in_flight is not None:
            self._in_flight[1].synchronize()  # the previous copy has read DALI's buffer
            self._in_flight = None
        out = self._pipe.run()
        txt = out[-1]
        texts = [bytes(txt.at(i).tobytes()).rstrip(b"\0").decode("utf-8", "replace") for i in range(len(txt))]
        samples = [encode_pair(self.tok, self.prompt, t.strip(), self.seq, self.image_tokens) for t in texts]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        if self.decode:
            batch["pixel_values"] = self._pixels(out[0])
        seq = batch["input_ids"].shape[1]
        batch["position_ids"] = torch.arange(seq).expand(len(samples), seq)
        return batch

    def state_dict(self) -> dict:
        return dict(dali=self._pipe.checkpoint() if self._pipe is not None else self._checkpoint,
                    corrupt=self.corrupt)

    def load_state_dict(self, state: dict) -> None:
        self._checkpoint, self.corrupt, self._pipe = state["dali"], int(state["corrupt"]), None


def _first_pipeline_stage() -> bool:
    from megatron.core import parallel_state as ps

    return not ps.model_parallel_is_initialized() or ps.is_pipeline_first_stage()
