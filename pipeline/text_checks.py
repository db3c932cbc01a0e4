"""Caption checks: length, script (a cheap language proxy), prose words, repetition loops, prompt echo."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Optional

# Unicode-name prefixes of letters per script; "latin" covers English and most European alt-text.
SCRIPTS = {"latin": ("LATIN",), "cjk": ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"), "cyrillic": ("CYRILLIC",),
           "arabic": ("ARABIC",), "greek": ("GREEK",), "devanagari": ("DEVANAGARI",)}
_WORD = re.compile(r"\w+", re.UNICODE)


def script_ratio(text: str, scripts) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    prefixes = tuple(p for s in scripts for p in SCRIPTS[s])
    hits = sum(1 for c in letters if unicodedata.name(c, "").startswith(prefixes))
    return hits / len(letters)


_EDGE_PUNCT = "\"'([{<.,;:!?)]}>"
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:%|s|st|nd|rd|th)?")
_CAMEL = re.compile(r"[a-z][A-Z]")


def _in_scripts(c: str, prefixes: tuple) -> bool:
    return unicodedata.name(c, "").startswith(prefixes)


def prose_word_share(text: str, scripts) -> float:
    """Share of whitespace-separated words that read as prose in `scripts`: letters only (inner ' and
    - allowed), no camelCase, or a number. A random captioner's token soup ('_READONLY쑥',
    'renderItem-month找回(records') and code or markup score low; a sentence scores 1."""
    prefixes = tuple(p for s in scripts for p in SCRIPTS[s])
    words = text.split()
    if not words:
        return 0.0

    def prose(w: str) -> bool:
        w = w.strip(_EDGE_PUNCT)
        if _NUMBER.fullmatch(w):
            return True
        return (bool(w) and w[0].isalpha() and w[-1].isalpha() and not _CAMEL.search(w)
                and all(c in "'-" or (c.isalpha() and _in_scripts(c, prefixes)) for c in w))

    return sum(map(prose, words)) / len(words)


def repeated_ngram_share(words, n: int) -> float:
    """Share of n-grams that repeat an earlier one: ~0 for prose, -> 1 for a generation loop."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(Counter(grams)) / len(grams)


def echoes_prompt(caption: str, prompt: str) -> bool:
    norm = lambda s: " ".join(_WORD.findall(s.lower()))  # noqa: E731
    c, p = norm(caption), norm(prompt)
    return bool(p) and (p in c or (len(c) > 10 and c in p))


def caption_problem(text: str, f, prompt: Optional[str] = None) -> Optional[str]:
    """f: FilterConfig. Returns a drop reason or None."""
    if text is None or not text.strip():
        return "caption_empty"
    if len(text) > f.caption_max_chars:  # before splitting: a 1 MB single "word" passes a word count
        return "caption_too_many_chars"
    words = _WORD.findall(text.lower())
    if len(words) < f.caption_min_words:
        return "caption_too_short"
    if len(words) > f.caption_max_words:
        return "caption_too_long"
    if f.min_script_ratio is not None and script_ratio(text, f.scripts) < f.min_script_ratio:
        return "caption_language"
    if f.min_prose_share is not None and prose_word_share(text, f.scripts) < f.min_prose_share:
        return "caption_not_prose"
    if f.max_repeated_ngram_share is not None and \
            repeated_ngram_share(words, f.repeat_ngram) > f.max_repeated_ngram_share:
        return "caption_repetition"
    if f.reject_prompt_echo and prompt and echoes_prompt(text, prompt):
        return "caption_prompt_echo"
    return None
