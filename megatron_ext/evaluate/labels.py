"""Label accuracy by ranking captions: each image's label is the one whose caption (the label in
--label-template, e.g. "a photo of a {}") the model finds most likely after the image and the
training prompt: the SUM of the caption's token and end-of-turn log-probabilities, as vqa.py ranks
answers. With the right images, with shuffled images (another sample's image: the same model
without the right image), and against chance (1 / number of labels) and the majority label.

Standard errors are binomial: `stderr_chance` of an accuracy at chance over these images, and
`stderr_vs_shuffled` of the difference of two accuracies (matched and shuffled), so "the model
sees" reads as matched - chance > 3 x stderr_chance and matched - shuffled > 3 x stderr_vs_shuffled."""

from __future__ import annotations

import math
from collections import Counter

from megatron_ext.evaluate.vqa import derangement


def _ranked(scorer, prompt: str, images: list, captions: list, batch_size: int, bar=None) -> list:
    """-> per image, the index of its most likely caption."""
    rows = [(i, c) for i in range(len(images)) for c in range(len(captions))]
    scores = [[0.0] * len(captions) for _ in images]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        result = scorer.continuation_logprobs([prompt] * len(chunk), [images[i] for i, _ in chunk],
                                              [captions[c] for _, c in chunk])
        for (i, c), (logp, _) in zip(chunk, result):
            scores[i][c] = logp
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return [max(range(len(captions)), key=row.__getitem__) for row in scores]


def label_accuracy(scorer, samples: list, template: str, prompt: str, batch_size: int = 16,
                   seed: int = 0, progress=None) -> tuple[dict, list]:
    """samples: evaluate/data.py Samples with a label. -> (summary, one record per image)."""
    samples = [s for s in samples if s.label is not None]
    if not samples:
        raise ValueError("--label-template: the data has no label column (a URL list's `label`, or "
                         "the pipeline's extra_columns: [label])")
    labels = sorted({s.label for s in samples})
    if len(labels) < 2:
        raise ValueError(f"--label-template: the data holds one label only ({labels[0]!r}); ranking needs two")
    captions = [template.format(label) for label in labels]
    other = derangement([s.key for s in samples], seed)
    by_key = {s.key: s.image for s in samples}
    rendered = scorer.prompt(prompt)
    truth = [labels.index(s.label) for s in samples]
    predicted = {}
    for view, images in (("matched", [s.image for s in samples]),
                         ("shuffled", [by_key[other[s.key]] for s in samples])):
        bar = progress(len(samples) * len(labels), f"label ranking ({view})") if progress else None
        predicted[view] = _ranked(scorer, rendered, images, captions, batch_size, bar)
    n = len(samples)
    acc = {view: sum(p == t for p, t in zip(predicted[view], truth)) / n for view in predicted}
    chance = 1 / len(labels)
    majority = Counter(truth).most_common(1)[0][1] / n
    pooled = (acc["matched"] + acc["shuffled"]) / 2
    summary = {
        "matched": acc["matched"], "shuffled": acc["shuffled"], "chance": chance, "majority_label": majority,
        "image_adds": {"vs_shuffled": acc["matched"] - acc["shuffled"], "vs_chance": acc["matched"] - chance},
        "stderr_chance": math.sqrt(chance * (1 - chance) / n),
        # two proportions under "the image adds nothing": their pooled rate
        "stderr_vs_shuffled": math.sqrt(2 * pooled * (1 - pooled) / n),
        "images": n, "labels": labels, "template": template, "prompt": prompt,
        "ranking_score": "sum of caption-token + end-of-turn log-probabilities",
    }
    records = [{"key": s.key, "label": s.label, "shuffled_key": other[s.key],
                "matched": labels[predicted["matched"][i]], "shuffled": labels[predicted["shuffled"][i]]}
               for i, s in enumerate(samples)]
    return summary, records
