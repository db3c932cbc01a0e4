"""One sample as the stages see it, whichever stage wrote the shard.

Shard layout: `<key>.jpg` image, `<key>.txt` alt-text, `<key>.json` metadata (img2dataset's, plus
uid, and after recaptioning: caption, captioner, prompt). Training shards from shard.py put the
chosen training text in `.txt` and keep both texts in `.json`."""
from __future__ import annotations

import json
from typing import Dict, Optional

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def parse(key: str, fields: Dict[str, bytes]) -> Optional[dict]:
    """-> dict(uid, key, image, meta, alt_text, caption) or None when the sample is malformed."""
    try:
        meta = json.loads(fields["json"].decode("utf-8"))
        uid = int(meta["uid"])
    except (KeyError, ValueError, UnicodeDecodeError, TypeError):
        return None
    image = next((fields[e] for e in IMAGE_EXTS if e in fields), None)
    alt = meta.get("alt_text")
    if alt is None and "txt" in fields:
        alt = fields["txt"].decode("utf-8", errors="replace")
    if "captioner" not in meta:
        meta.pop("caption", None)  # img2dataset's `caption` is the alt-text, not a new caption
    return {"uid": uid, "key": key, "image": image, "meta": meta, "alt_text": alt or "",
            "caption": meta.get("caption")}


def sample_key(uid: int) -> str:
    """Output member names come from our own uid, never from names found in a downloaded tar."""
    return f"{uid:012d}"
