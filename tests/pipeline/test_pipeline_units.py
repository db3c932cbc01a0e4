"""Unit checks of the pieces the stages are built from (no Ray, no network)."""
import io
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import accounting
from pipeline.config import ConfigError, FilterConfig, from_dict
from pipeline.dali_index import index_lines
from pipeline.dedup import Deduper
from pipeline.fsio import iter_tar, write_tar_atomic
from pipeline.image_guard import check_bytes
from pipeline.shard import plan
from pipeline.text_checks import caption_problem


def _jpeg(w, h):
    buf = io.BytesIO()  # noise: the scan data dwarfs the header, as in a real photo
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ---- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"output_dir": "o", "recaption": {"enabled": False}}, "input: required"),
    ({"input": "u.csv", "output_dir": "o", "download": {"sampels_per_shard": 3}}, "download: unknown key(s) ['sampels_per_shard']"),
    ({"input": "u.csv", "output_dir": "o", "recaption": {"backend": "tgi", "model": "m"}}, "recaption.backend: 'tgi' is not one of"),
    ({"input": "u.csv", "output_dir": "o"}, "recaption.model: required"),
    ({"input": "u.csv", "output_dir": "o", "recaption": {"enabled": False}, "shard": {"samples_per_shard": 0}}, "shard.samples_per_shard: must be > 0"),
    ({"input": "u.csv", "output_dir": "o", "recaption": {"enabled": False}, "filter": {"min_side": "big"}}, "filter.min_side: expected int"),
    ({"input": "u.csv", "output_dir": "o", "recaption": {"enabled": False}, "filter": {"scripts": ["klingon"]}}, "filter.scripts: unknown ['klingon']"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=None) as e:
        from_dict(data)
    assert message in str(e.value)


def test_config_hash_changes_with_content():
    a = from_dict({"input": "u", "output_dir": "o", "recaption": {"enabled": False}})
    b = from_dict({"input": "u", "output_dir": "o", "recaption": {"enabled": False}, "shard": {"seed": 1}})
    assert a.hash("shard") != b.hash("shard") and a.hash("filter") == b.hash("filter")


# ---- hostile bytes and tar members ---------------------------------------------------------------
def test_image_guard_reasons():
    good = _jpeg(64, 48)
    assert check_bytes(good, 1e9) is None
    assert check_bytes(good[: len(good) // 2], 1e9) == "truncated_image"
    assert check_bytes(b"<html>nope</html>", 1e9) == "not_an_image"
    assert check_bytes(good, 64 * 48 - 1) == "decompression_bomb"
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    assert check_bytes(png.getvalue()[:-20], 1e9) == "truncated_image"


def test_tar_members_cannot_escape(tmp_path):
    evil = tmp_path / "shard.tar"
    with tarfile.open(evil, "w") as tar:
        for name, data in [("../../escape.jpg", b"x"), ("/etc/abs.json", b"{}"), ("ok/000001.jpg", b"img"),
                           ("ok/000001.json", b'{"uid": 1}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("000002.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    got = list(iter_tar(str(evil)))
    assert [(k, p) for k, _, p in got if p] == [("../../escape.jpg", "unsafe_tar_member"),
                                              ("/etc/abs.json", "unsafe_tar_member"),
                                              ("000002.jpg", "unsafe_tar_member")]
    assert [(k, sorted(f)) for k, f, p in got if not p] == [("000001", ["jpg", "json"])]
    assert not (tmp_path.parent.parent / "escape.jpg").exists()
    with pytest.raises(ValueError, match="unsafe sample key"):
        write_tar_atomic(str(tmp_path / "out.tar"), [("../x", {"jpg": b"1"})])
    assert not os.path.exists(tmp_path / "out.tar")


def test_tar_writer_is_deterministic_and_dali_index_matches(tmp_path):
    samples = [(f"{i:012d}", {"jpg": _jpeg(8, 8), "txt": b"a cat", "json": b"{}"}) for i in range(3)]
    write_tar_atomic(str(tmp_path / "a.tar"), samples)
    write_tar_atomic(str(tmp_path / "b.tar"), samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    lines = index_lines(str(tmp_path / "a.tar"))
    assert lines[0] == "v1.2 3"
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = [m for m in tar]
    first = lines[1].split()
    assert first[:4] == ["jpg", str(members[0].offset_data), str(members[0].size), "000000000000.jpg"]


# ---- filter pieces ------------------------------------------------------------------------------
def test_caption_checks():
    f = FilterConfig()
    assert caption_problem("a brown dog runs across a wet beach at sunset", f) is None
    assert caption_problem("dog", f) == "caption_too_short"
    assert caption_problem("собака бежит по мокрому пляжу на закате", f) == "caption_language"
    assert caption_problem("a dog a dog a dog a dog a dog a dog a dog a dog", f) == "caption_repetition"
    prompt = "Describe this image in detail."
    assert caption_problem("Describe this image in detail. A dog on a beach.", f, prompt) == "caption_prompt_echo"
    relaxed = FilterConfig(min_script_ratio=None, max_repeated_ngram_share=None, min_prose_share=None)
    assert caption_problem("собака бежит по мокрому пляжу на закате", relaxed) is None
    assert caption_problem("a dog a dog a dog a dog a dog a dog a dog a dog", relaxed) is None


def test_near_duplicate_index_equals_brute_force():
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(0, 2**63, 200, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(rng.integers(0, 63))) ^ (1 << int(rng.integers(0, 63))) for h in base[:50]]
    dd, kept = Deduper(max_distance=4), []
    for i, h in enumerate(hashes):
        brute = any(bin(h ^ k).count("1") <= 4 for k in kept)
        assert (dd.check(str(i), h) == "duplicate_near") == brute
        if not brute:
            kept.append(h)
    assert len(kept) == 200
    assert Deduper(None).check("a", 1) is None and Deduper(None).check("a", 1) is None
    ex = Deduper(None)
    ex.check("a", None)
    assert ex.check("a", None) == "duplicate_exact"


# ---- shard plan and accounting -------------------------------------------------------------------
def test_shard_plan_deterministic_fixed_size():
    kept = pd.DataFrame({"uid": range(23), "shard": "s", "key": [str(i) for i in range(23)]})
    a, rest = plan(kept, 5, seed=7, drop_last=False)
    b, _ = plan(kept.sample(frac=1, random_state=1), 5, seed=7, drop_last=False)
    assert [list(c.uid) for c in a] == [list(c.uid) for c in b]  # input order does not matter
    assert [len(c) for c in a] == [5, 5, 5, 5, 3] and rest.empty
    assert sorted(u for c in a for u in c.uid) == list(range(23))
    c, _ = plan(kept, 5, seed=8, drop_last=False)
    assert [list(x.uid) for x in a] != [list(x.uid) for x in c]
    d, rest = plan(kept, 5, seed=7, drop_last=True)
    assert [len(x) for x in d] == [5, 5, 5, 5] and len(rest) == 3


def test_handoff_mismatch_is_an_error():
    prev = accounting.table([(1, "a", "pass", ""), (2, "a", "pass", ""), (3, "a", "drop", "x")]).to_pandas()
    ok = accounting.table([(1, "b", "pass", ""), (2, "b", "drop", "y")]).to_pandas()
    accounting.check_handoff("a", prev, "b", ok)
    lost = accounting.table([(1, "b", "pass", "")]).to_pandas()
    with pytest.raises(accounting.AccountingError, match=r"missing \[2\]"):
        accounting.check_handoff("a", prev, "b", lost)
    twice = accounting.table([(1, "b", "pass", ""), (1, "b", "pass", ""), (2, "b", "pass", "")]).to_pandas()
    with pytest.raises(accounting.AccountingError, match="decided twice"):
        accounting.check_handoff("a", prev, "b", twice)


def test_input_rows_checked(tmp_path):
    from pipeline.inputs import prepare

    csv = tmp_path / "u.csv"
    csv.write_bytes(b"url,caption\nhttp://h/a.jpg,fine\nftp://h/b.jpg,x\nhttp://h/a.jpg,again\n"
                    b"http://h/c.jpg,caf\xe9\n")
    urls, todo = prepare(str(csv), "url", "caption", str(tmp_path / "in"))
    d = pd.read_parquet(tmp_path / "in" / "decisions.parquet")
    assert list(d.reason) == ["", "invalid_url", "duplicate_url", "caption_not_utf8"]
    assert list(todo.uid) == [0] and len(urls) == 4
    with pytest.raises(FileNotFoundError, match="input URL list not found"):
        prepare(str(tmp_path / "nope.parquet"), "url", "caption", str(tmp_path / "in"))
    with pytest.raises(ValueError, match="no URL column 'link'"):
        prepare(str(csv), "link", "caption", str(tmp_path / "in"))
