"""The caption-source policy (filter.text_field auto): a sample trains on its recaption when the
recaption passes the caption checks and on its alt-text otherwise; a random captioner's token soup
fails the prose-word check. The whole chain with the tiny captioner: test_pipeline_easyvqa.py."""
import pytest

from pipeline.config import FilterConfig
from pipeline.filter import ALT_TEXT, RECAPTION, choose_text, training_text
from pipeline.text_checks import caption_problem, prose_word_share

PROMPT = "Describe this image in detail."
# verbatim captions of the tiny random Qwen2.5-VL (recaption.tiny) on easy-VQA images
SOUP = ["公益活动 요 гер_COLLECTIONutaս饹_READONLY쑥没见过_iterWatch ohne(joinOUCH�㊑ ort bishopobble Urban Алексан shaftmares",
        "公益活动 요添加剂 Алексан depleted mastery renderItem-month找回(records米(fp/vendor\twhen Image:'' sayılı ($( Eh짢 "
        "scl ImageIDENT burden",
        "公益活动 요 гер_COLLECTIONutaս饹(levelsDyn饯('${\">{aled hexadecimal attendedIRMWARE Oval depicts_PLAYER "
        "juiceités waypoints\twith demonstrations"]
PROSE = ["a red triangle", "A brown dog runs across a wet beach at sunset.",
         "It's a black-and-white photo (USA, 1990s) of two cats on a sofa."]


def _sample(caption, alt="a blue circle"):
    return {"caption": caption, "alt_text": alt}


def test_prose_word_share_separates_token_soup_from_captions():
    assert all(prose_word_share(t, ["latin"]) == 1.0 for t in PROSE)
    assert all(prose_word_share(t, ["latin"]) < 0.6 for t in SOUP)
    f = FilterConfig(caption_min_words=1)
    assert [caption_problem(t, f, PROMPT) for t in SOUP] == ["caption_not_prose"] * 3
    # the language check alone lets this soup through: mostly Latin letters
    assert caption_problem(SOUP[0], FilterConfig(caption_min_words=1, min_prose_share=None), PROMPT) is None


@pytest.mark.parametrize("text_field,caption,alt,expected", [
    ("auto", PROSE[1], "a blue circle", (RECAPTION, PROSE[1], None, None)),
    ("auto", SOUP[0], "a blue circle", (ALT_TEXT, "a blue circle", None, "caption_not_prose")),
    ("auto", "", "a blue circle", (ALT_TEXT, "a blue circle", None, "caption_empty")),
    ("auto", SOUP[1], "IMG_2041.JPG", (ALT_TEXT, "IMG_2041.JPG", "caption_not_prose", "caption_not_prose")),
    ("caption", SOUP[0], "a blue circle", (RECAPTION, SOUP[0], "caption_not_prose", "caption_not_prose")),
    ("alt_text", PROSE[1], "a blue circle", (ALT_TEXT, "a blue circle", None, None)),
])
def test_choose_text(text_field, caption, alt, expected):
    f = FilterConfig(text_field=text_field, caption_min_words=1)
    got = choose_text(_sample(caption, alt), f, True, PROMPT)
    assert got == expected
    assert training_text(_sample(caption, alt), got[0]) == got[1]


def test_without_recaptioning_the_alt_text_is_the_only_text():
    f = FilterConfig(caption_min_words=1)
    assert choose_text({"caption": None, "alt_text": PROSE[0]}, f, False, None) == (ALT_TEXT, PROSE[0], None, None)
