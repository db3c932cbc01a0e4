"""Cheap checks on downloaded bytes before anything decodes them: header-only size (so a
decompression bomb is refused before it is allocated), not-an-image (an HTML error page), and
truncated JPEG/PNG (OpenCV would silently decode a truncated JPEG and pad it with grey)."""
from __future__ import annotations

import io
import warnings
from typing import Optional

from PIL import Image


def check_bytes(data: bytes, max_area: float) -> Optional[str]:
    """Return a drop reason, or None when the bytes look like a complete image of sane size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                w, h, fmt = im.width, im.height, im.format
    except Image.DecompressionBombError:
        return "decompression_bomb"
    except Exception:
        return "not_an_image"
    if w * h > max_area:
        return "decompression_bomb"
    if fmt == "JPEG":
        # The last scan must be followed by an end-of-image marker.
        sos, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
        if not (eoi > sos >= 0):
            return "truncated_image"
    elif fmt == "PNG" and b"IEND" not in data[-32:]:
        return "truncated_image"
    return None
