"""Held-out plain text for the language-prior check (perplexity of the LLM with no image, base vs
after each stage): real English prose that ships offline and that no stage trains on.

Default source: the Python Language Reference as CPython ships it for `help()`
(pydoc_data/topics.py in the standard library; on Debian the libpython3.X-stdlib package), its
prose paragraphs only: indented grammar and code blocks and the underlines of headings are
dropped. Any UTF-8 text file can be given instead (--text FILE)."""

from __future__ import annotations

from pathlib import Path

SOURCE = "Python Language Reference (pydoc_data.topics, CPython standard library)"


def _prose(doc: str) -> list[str]:
    paragraphs, current = [], []
    for line in doc.splitlines():
        heading_rule = line.strip() and set(line.strip()) <= set("*=-~^")
        if not line.strip() or line.startswith((" ", "\t")) or heading_rule:
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    return [p for p in paragraphs if len(p.split()) >= 8]  # sentences, not titles or list stubs


def heldout_text(path: str | None = None, max_chars: int = 20_000) -> tuple[str, str]:
    """(text, where it came from): the first `max_chars` characters of prose."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--text {path}: no such file")
        return p.read_text(encoding="utf-8")[:max_chars], str(p)
    from pydoc_data.topics import topics

    text = "\n\n".join(par for key in sorted(topics) for par in _prose(topics[key]))
    return text[:max_chars], SOURCE


def perplexity(scorer, text: str, window: int = 256) -> dict:
    import math

    nats, tokens = scorer.text_nll(text, window)
    if tokens == 0:
        raise ValueError("the held-out text is shorter than two tokens")
    return {"nats_per_token": nats / tokens, "perplexity": math.exp(nats / tokens), "tokens": tokens}
