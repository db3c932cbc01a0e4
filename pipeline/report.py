"""Per-run report: an HTML page with the accounting, a PNG contact sheet (image, alt-text, new
caption, filter decision) and histograms of image sizes and caption lengths."""
from __future__ import annotations

import html
import io
import json
import logging
import os
import textwrap
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.fsio import iter_tar  # noqa: E402
from pipeline.samples import parse  # noqa: E402
from pipeline.stage_io import FILTER, source_shards  # noqa: E402

log = logging.getLogger(__name__)


def _reached_filter(cfg) -> dict:
    """uid -> sample for every sample the filter saw (image, alt-text, caption)."""
    out = {}
    for shard in source_shards(cfg, "filter"):
        for key, fields, problem in iter_tar(shard):
            s = None if problem else parse(key, fields)
            if s is not None:
                out[s["uid"]] = s
    return out


def pick_samples(samples: dict, decisions: pd.DataFrame, n: int, seed: int = 0) -> list:
    """Up to n uids, half of them dropped by the filter when there are that many, so the
    sheet shows what the filter removes as well as what it keeps."""
    rng = np.random.default_rng(seed)
    kept = set(decisions.uid[decisions.decision == "kept"])
    pools = [sorted(u for u in samples if u not in kept), sorted(u for u in samples if u in kept)]
    first = list(rng.permutation(pools[0])[: n // 2])
    rest = list(rng.permutation(pools[1])[: n - len(first)])
    return sorted(int(u) for u in first + rest)


def contact_sheet(samples: list, decisions: pd.DataFrame, path: str) -> None:
    verdict = {u: (d if d != "drop" else f"dropped: {s}/{r}")
               for u, d, s, r in zip(decisions.uid, decisions.decision, decisions.stage, decisions.reason)}
    n = max(1, len(samples))
    fig, axes = plt.subplots(n, 2, figsize=(11, 1.9 * n), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    for (ax_img, ax_txt), s in zip(axes, samples):
        im = Image.open(io.BytesIO(s["image"])).convert("RGB")
        im.thumbnail((256, 256))
        ax_img.imshow(im)
        text = (f"uid {s['uid']}  [{verdict.get(s['uid'], '?')}]\n"
                f"alt-text: {textwrap.shorten(s['alt_text'], 180)}\n"
                f"caption:  {textwrap.shorten(s['caption'] or '(not recaptioned)', 300)}")
        ax_txt.text(0, 0.5, "\n".join(textwrap.fill(line, 110) for line in text.split("\n")),
                    va="center", fontsize=7, family="monospace")
    for ax in axes.ravel():
        ax.axis("off")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph")  # captions in scripts the font lacks
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    plt.close(fig)


def histograms(features: pd.DataFrame, samples: dict, path: str) -> None:
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.5))
    measured = features[features.width > 0]
    ax[0].hist([measured.width, measured.height], bins=20, label=["width", "height"])
    ax[0].set_title("original image size (px)")
    ax[0].legend()
    ax[1].hist(np.maximum(measured.width, measured.height) / np.maximum(1, np.minimum(measured.width, measured.height)),
               bins=20)
    ax[1].set_title("aspect ratio (long / short)")
    alt = [len(s["alt_text"].split()) for s in samples.values()]
    cap = [len((s["caption"] or "").split()) for s in samples.values() if s["caption"] is not None]
    ax[2].hist([alt, cap] if cap else [alt], bins=20, label=["alt-text", "new caption"][: 2 if cap else 1])
    ax[2].set_title("caption length (words)")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(rows, header) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write(cfg) -> str:
    out = os.path.join(cfg.output_dir, "report")
    os.makedirs(out, exist_ok=True)
    decisions = pd.read_parquet(os.path.join(cfg.output_dir, "decisions.parquet"))
    with open(os.path.join(cfg.output_dir, "summary.json")) as f:
        summary = json.load(f)
    features = pd.read_parquet(os.path.join(cfg.stage_dir(FILTER), "features.parquet"))
    samples = _reached_filter(cfg)
    pick = pick_samples(samples, decisions, cfg.report.samples)
    contact_sheet([samples[u] for u in pick], decisions, os.path.join(out, "contact_sheet.png"))
    histograms(features, samples, os.path.join(out, "histograms.png"))
    reasons = [(k, v) for k, v in summary["dropped_by_reason"].items()]
    stages = [(k, v["received"], v["passed"], v["dropped"]) for k, v in summary["by_stage"].items()]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>data run {html.escape(cfg.output_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style></head><body>
<h1>Data pipeline run</h1>
<p>input <b>{summary['input']}</b> URLs: kept <b>{summary['kept']}</b>, dropped <b>{summary['dropped']}</b>
({summary['kept']} + {summary['dropped']} = {summary['kept'] + summary['dropped']}).
Config hash {cfg.hash()}. Per-sample decisions: decisions.parquet.</p>
<h2>Stages</h2>{_table(stages, ["stage", "received", "passed", "dropped"])}
<h2>Drops by reason</h2>{_table(reasons, ["stage/reason", "count"])}
<h2>Image sizes and caption lengths</h2><img src="histograms.png">
<h2>Samples ({len(pick)} of {len(samples)} that reached the filter)</h2><img src="contact_sheet.png">
</body></html>"""
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write(page)
    log.info("report: %s", path)
    return path
