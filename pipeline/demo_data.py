"""A synthetic web for tests, the demo and the benchmark: generated images (and every hostile
case the pipeline must survive), optionally easy-VQA's train images with their question-answer
pairs, served by an HTTP server on 127.0.0.1, plus the URL list."""
from __future__ import annotations

import argparse
import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from megatron_ext.data import easyvqa

WORDS = ("red green blue small large round square striped dotted bright dark old new wooden metal "
         "cat dog house tree car boat bird flower mountain river street window table").split()


def blob_image(seed: int, w: int, h: int) -> Image.Image:
    """Smooth random blobs: distinct perceptual hashes per seed, compressible like photos."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _alt(seed: int) -> bytes:
    rng = np.random.default_rng(seed + 10_000)
    return ("a photo of a " + " ".join(rng.choice(WORDS, size=6))).encode()


def build_corpus(n_good: int = 24, seed: int = 0) -> Tuple[Dict[str, Tuple[bytes, str]], List[tuple]]:
    """-> (files: path -> (body, content type), rows: (path or absolute URL, alt-text bytes, expected)).

    `expected` is the reason the pipeline must give ("" = should survive download), used by tests."""
    if not 0 < n_good < 999:
        raise ValueError(f"n_good={n_good}: between 1 and 998 (image seeds are seed * 1000 + i)")
    files, rows = {}, []
    rng = np.random.default_rng(seed)
    for i in range(n_good):
        w, h = int(rng.integers(300, 640)), int(rng.integers(300, 640))
        files[f"/img/{i}.jpg"] = (_jpeg(blob_image(seed * 1000 + i, w, h)), "image/jpeg")
        rows.append((f"/img/{i}.jpg", _alt(i), ""))
    base = blob_image(seed * 1000 + 1, 400, 300)
    full = _jpeg(blob_image(seed * 1000 + 2, 400, 400))
    hostile = {
        "/bad/corrupt.jpg": (bytes(rng.integers(0, 256, 2000, dtype=np.uint8)), "image/jpeg", "not_an_image"),
        "/bad/truncated.jpg": (full[: len(full) // 2], "image/jpeg", "truncated_image"),
        "/bad/page.jpg": (b"<!doctype html><html><body>Access denied</body></html>", "image/jpeg", "not_an_image"),
        "/bad/tiny.png": (_png(Image.new("RGB", (1, 1), (255, 0, 0))), "image/png", "image_too_small"),
        "/bad/bomb.png": (_png(Image.new("L", (8000, 8000))), "image/png", "decompression_bomb"),
        "/dup/exact.jpg": (_jpeg(base), "image/jpeg", ""),       # same bytes as /img/1.jpg after re-encode
        "/dup/near.jpg": (_jpeg(base.resize((380, 285)), 70), "image/jpeg", ""),  # near duplicate
        "/odd/wide.jpg": (_jpeg(blob_image(seed * 1000 + 999, 640, 64)), "image/jpeg", ""),  # aspect ratio
    }
    files["/img/1.jpg"] = (_jpeg(base), "image/jpeg")
    for path, (body, ctype, expected) in hostile.items():
        files[path] = (body, ctype)
        rows.append((path, _alt(len(rows)), expected))
    rows.append(("/missing/404.jpg", _alt(90), "http_404"))
    rows.append(("/img/0.jpg", _alt(91), "duplicate_url"))
    rows.append(("/img/latin1.jpg", "une vue d'\u00e9t\u00e9 caf\u00e9".encode("latin-1"), "caption_not_utf8"))
    files["/img/latin1.jpg"] = files["/img/2.jpg"]
    rows.append(("", _alt(92), "invalid_url"))
    return files, rows


def add_easyvqa(files: dict, rows: list, n: int) -> dict:
    """Serves the first n easy-VQA TRAIN images (their PNG bytes, unchanged) at /easyvqa/<id>.png,
    each with an alt-text built from its own questions ('a red triangle'); appends their rows.
    -> {path: JSON list of [question, answer]}: the URL list's `qa` column. The test split is
    never served: it is the evaluation's."""
    train = easyvqa.load_split("train")
    if not 0 <= n <= len(train):
        raise ValueError(f"easy-VQA images: {n} asked, the train split has {len(train)}")
    qa = {}
    for sample in train[:n]:
        path = f"/easyvqa/{sample.image_id}.png"
        with open(sample.image_path, "rb") as f:
            files[path] = (f.read(), "image/png")
        rows.append((path, easyvqa.alt_text(sample).encode(), ""))
        qa[path] = json.dumps(sample.pairs)
    return qa


class Server:
    """Threaded HTTP server on 127.0.0.1 (ephemeral port) serving a corpus; use as a context manager."""

    def __init__(self, files: Dict[str, Tuple[bytes, str]], port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hit = files.get(self.path)
                if hit is None:
                    self.send_error(404, "File not found")
                    return
                body, ctype = hit
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_url_list(path: str, base_url: str, rows: List[tuple], qa: Optional[dict] = None) -> None:
    """CSV written as bytes, so a non-UTF-8 alt-text reaches the pipeline as the web would send it.
    With `qa` (path -> JSON pairs, add_easyvqa), a `qa` column ('[]' for the other rows)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["url", "caption"] + (["qa"] if qa is not None else []))
    lines = [buf.getvalue().encode()]
    for url, alt, _ in rows:
        full = (base_url + url) if url.startswith("/") else url
        buf = io.StringIO()
        extra = [qa.get(url, "[]")] if qa is not None else []
        csv.writer(buf, lineterminator="\n").writerow([full, "@ALT@"] + extra)
        lines.append(buf.getvalue().encode().replace(b"@ALT@", b'"' + alt.replace(b'"', b'""') + b'"'))
    with open(path, "wb") as f:
        f.write(b"".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description="Serve the synthetic corpus on 127.0.0.1 and write its URL list.")
    p.add_argument("--urls", required=True, help="where to write the CSV URL list")
    p.add_argument("--n-good", type=int, default=24)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--easyvqa", type=int, default=0,
                   help="also serve this many easy-VQA train images, with a qa column (pipeline extra_columns: [qa])")
    args = p.parse_args(argv)
    files, rows = build_corpus(args.n_good)
    qa = add_easyvqa(files, rows, args.easyvqa) if args.easyvqa else None
    with Server(files, args.port) as s:
        write_url_list(args.urls, s.url, rows, qa)
        print(f"serving {len(files)} files at {s.url}; URL list in {args.urls}; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
