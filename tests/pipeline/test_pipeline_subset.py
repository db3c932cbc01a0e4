"""`pipeline/run.py --stages download` and `--stages download,filter` (the docs/DATA.md example)
succeed with a recaptioning config and account for what those stages decided."""
import json
import os

from pipeline_helpers import config_dict, write_config
from test_pipeline_cli import _run


def test_stage_subsets_account_for_what_ran(corpus, ray_cluster, tmp_path):
    out = tmp_path / "run"
    # recaption stays enabled in the config; its checkpoint is never needed by these subsets.
    # The session's Ray head serves the filter (a fresh local Ray is slow to start on 2 cores).
    cfg = write_config(tmp_path / "c.yaml", config_dict(corpus.urls_csv, str(out), str(tmp_path / "unused-qwen"),
                                                        ray_cluster["gcs"], download={"distributor": "multiprocessing"}))
    r = _run(["pipeline/run.py", "--config", cfg, "--stages", "download"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["through"] == "download" and list(s["by_stage"]) == ["input", "download"]
    assert s["kept"] + s["dropped"] == s["input"] == len(corpus.rows)
    assert s["kept"] == s["by_stage"]["download"]["passed"] > 0
    assert "through the download stage; later stages not run" in r.stdout

    r = _run(["pipeline/run.py", "--config", cfg, "--stages", "download,filter"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["through"] == "filter" and list(s2["by_stage"]) == ["input", "download", "filter"]
    assert s2["by_stage"]["filter"]["received"] == s["kept"]  # the filter saw what download passed
    assert s2["kept"] + s2["dropped"] == s2["input"]
    assert not os.path.exists(out / "20_recaption")
