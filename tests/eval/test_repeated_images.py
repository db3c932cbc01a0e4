"""A batch that repeats an image (the evaluation batches several questions about one image) has its
conditioning computed once per distinct image: the same values as image by image, with the vision
encoder run on the distinct images only."""

import pytest
import torch

from megatron_ext.evaluate.scorer import ExportScorer
from megatron_ext.evaluate.vqa import heldout_questions

HEADS = (".to_T.", ".to_W_v.")  # the zero-initialised last layers of ROSE's and VLoRA's generators


@pytest.fixture(scope="module", params=["blind_export", "blind_vlora_export"])
def seeing(request):
    """The session's ROSE or VLoRA export from initialisation, its heads given weights here."""
    scorer = ExportScorer(request.getfixturevalue(request.param))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights for the zero-initialised heads: the image changes the model
        for name, p in sorted(scorer.model.named_parameters()):
            if any(h in name for h in HEADS):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return scorer


def _pixels(scorer, paths):
    return scorer._inputs([scorer.prompt("what shape is this?")] * len(paths), paths)["pixel_values"]


def test_a_repeated_image_is_encoded_once_and_gets_the_same_conditioning(seeing):
    qs = heldout_questions(40)
    paths = sorted({q.image_path for q in qs})[:3]
    batch = [paths[0], paths[1], paths[0], paths[2], paths[1]]
    seen = []
    hook = seeing.model.vision_tower.register_forward_hook(lambda m, args, kw, out: seen.append(kw["pixel_values"].shape[0]),
                                                           with_kwargs=True)
    try:
        with torch.no_grad():
            together = seeing.model.conditioning(_pixels(seeing, batch))
        assert seen == [3]  # the three distinct images, once each
        with torch.no_grad():
            alone = [seeing.model.conditioning(_pixels(seeing, [p])) for p in batch]
    finally:
        hook.remove()
    assert together and set(together) == set(alone[0])
    for key, value in together.items():
        assert value.shape[0] == len(batch)
        for row, single in enumerate(alone):
            torch.testing.assert_close(value[row], single[key][0], rtol=1e-4, atol=1e-5)  # batch-size rounding
    # the images differ, so a wrong index would show
    key = next(iter(together))
    assert not torch.allclose(together[key][0], together[key][1])


def test_answers_with_repeated_images_equal_answers_one_by_one(seeing):
    qs = [q for q in heldout_questions(40)][:8]  # the first test images, several questions each
    assert len({q.image_path for q in qs}) < len(qs)
    texts, images = [q.text for q in qs], [q.image_path for q in qs]
    together = seeing.generate(texts, images, max_new_tokens=3)
    alone = [seeing.generate([t], [i], max_new_tokens=3)[0] for t, i in zip(texts, images)]
    assert together == alone
