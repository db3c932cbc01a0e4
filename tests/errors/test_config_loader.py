"""The shared loader (pvcommon/config.py) behind both the pipeline's and training's configs:
every mistake names the file or key; both loaders give the same message for the same mistake."""
from dataclasses import dataclass, field
from typing import Optional

import pytest

from pvcommon.config import ConfigError, apply_overrides, build, load, read_yaml


@dataclass
class Inner:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "a"
    items: Optional[list] = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    path: str = ""


def test_types_convert_where_yaml_is_ambiguous():
    cfg = build(Outer, {"inner": {"n": "3", "x": "2e-3", "flag": "true", "name": 7}})
    assert (cfg.inner.n, cfg.inner.x, cfg.inner.flag, cfg.inner.name) == (3, 0.002, True, "7")
    assert build(Outer, {"inner": {"x": 1}}).inner.x == 1.0 and isinstance(build(Outer, {"inner": {"x": 1}}).inner.x, float)


@pytest.mark.parametrize("data,message", [
    ({"inner": {"m": 1}}, "inner: unknown key(s) ['m']; known: ['flag', 'items', 'n', 'name', 'x']"),
    ({"inner": {"n": "abc"}}, "inner.n: expected int, got 'abc'"),
    ({"inner": {"n": 2.5}}, "inner.n: expected int, got 2.5"),
    ({"inner": {"flag": 3}}, "inner.flag: expected bool, got 3"),
    ({"inner": {"items": "a,b"}}, "inner.items: expected list, got 'a,b'"),
    ({"inner": {"name": None}}, "inner.name: must not be null"),
    ({"inner": 5}, "inner: expected a mapping (a section), got 5"),
    ({"other": {}}, "config: unknown key(s) ['other']"),
])
def test_build_names_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        build(Outer, data)
    assert str(e.value) == message or message in str(e.value)


@pytest.mark.parametrize("items,message", [
    (["inner.n.deeper=1"], "override 'inner.n.deeper=1': inner.n is a value (1), not a section; set inner.n=... instead"),
    (["inner.n"], "override 'inner.n': expected key.path=value"),
    (["inner..n=1"], "is not a key path"),
    (["inner.items=[a, b"], "override 'inner.items=[a, b': the value is not valid YAML"),
])
def test_overrides_name_the_key(items, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides({"inner": {"n": 1}}, items)
    assert message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("inner: {n: 3\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "expected a mapping of sections, got list"),
    ("inner:\n  n: [1\n", "not valid YAML at line 3"),
])
def test_file_mistakes_name_the_file(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert str(p) in str(e.value) and message in str(e.value)
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="is not a file"):
        read_yaml(tmp_path)


def test_both_loaders_share_it(tmp_path):
    """The same mistakes through pipeline/config.py and megatron_ext/training/config.py."""
    from megatron_ext.training.config import ConfigError as TrainError
    from megatron_ext.training.config import load_config
    from pipeline.config import ConfigError as PipeError
    from pipeline.config import load as load_pipeline

    assert TrainError is PipeError is ConfigError
    p = tmp_path / "c.yaml"
    p.write_text("input: u.csv\noutput_dir: o\nrecaption: {model: m}\n")
    with pytest.raises(ConfigError, match=r"override 'recaption.model.path=x': recaption.model is a value \('m'\)"):
        load_pipeline(str(p), ["recaption.model.path=x"])
    p.write_text("train: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"override 'train.steps.x=1': train.steps is a value \(3\)"):
        load_config(str(p), ["train.steps.x=1"])
    p.write_text("train: {steps: 3\n")
    for loader in (lambda: load_pipeline(str(p)), lambda: load_config(str(p))):
        with pytest.raises(ConfigError, match="not valid YAML at line 2"):
            loader()
    assert load(Outer, None, ["inner.n=4", "path=x"]).inner.n == 4
