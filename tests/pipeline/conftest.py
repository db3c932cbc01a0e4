"""Fixtures for the data-pipeline tests: a synthetic web on 127.0.0.1 (with every hostile case and
easy-VQA train images with a qa column),
one Ray head for the folder's tests (started like a real cluster, so `ray job submit` and
subprocess drivers can join it), the tiny offline Qwen2.5-VL, and one full pipeline run."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline_helpers import PY, Corpus, free_ports, config_dict

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before anything imports ray
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from pipeline.demo_data import Server, add_easyvqa, build_corpus, write_url_list

    files, rows = build_corpus(n_good=16)
    qa = add_easyvqa(files, rows, 8)  # easy-VQA train images with their question-answer pairs
    d = tmp_path_factory.mktemp("web")
    with Server(files) as server:
        path = str(d / "urls.csv")
        write_url_list(path, server.url, rows, qa)
        yield Corpus(server.url, rows, path, qa)


class _RayHead:
    """`ray start --head` on loopback in its own process group, killed by group id. Started when a
    test first asks for it and stopped after the last test of this folder (tests/conftest.py runs
    the folder's tests one after another, on one worker): an idle head and its dashboard cost about
    7% of a core, which the rest of the suite would otherwise pay until the session ends."""

    def __init__(self):
        self.info, self._head, self._log, self._old_auth = None, None, None, None

    def start(self) -> dict:
        if self.info is not None:
            return self.info
        gcs, dash, client, agent = free_ports(4)
        temp = tempfile.mkdtemp(prefix="pvray", dir="/tmp")  # short: Ray's socket paths have a length limit
        env = dict(os.environ, RAY_AUTH_MODE="token")
        cmd = [os.path.join(os.path.dirname(PY), "ray"), "start", "--head", "--block", "--num-cpus=2",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--port={gcs}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]
        self._log = open(os.path.join(temp, "head.log"), "w")
        self._head = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._old_auth = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "token"  # clients of a `ray start` head need the token
        self.info = {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "temp": temp}
        try:
            deadline = time.time() + 90
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                    break
                except urllib.error.HTTPError:
                    break  # it answers (401 without the token): the dashboard is up
                except Exception:
                    if self._head.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"ray head did not start; see {temp}/head.log")
                    time.sleep(0.5)
            from pipeline.config import RayConfig
            from pipeline.ray_setup import init_ray
            init_ray(RayConfig(address=self.info["gcs"]))
        except BaseException:
            self.stop()
            raise
        return self.info

    def stop(self) -> None:
        if self.info is None:
            return
        import ray

        ray.shutdown()
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self._head.pid, sig)  # the head's own process group, started above
                self._head.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._log.close()
        if self._old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = self._old_auth
        shutil.rmtree(self.info["temp"], ignore_errors=True)
        self.info = None


_RAY_HEAD = _RayHead()


def pytest_runtest_teardown(item, nextitem):
    """(A hook of this folder's conftest: `item` is one of its tests.)"""
    if nextitem is None or not nextitem.path.is_relative_to(Path(__file__).parent):
        _RAY_HEAD.stop()


def pytest_sessionfinish(session):
    _RAY_HEAD.stop()


@pytest.fixture
def ray_cluster():
    """One Ray head for this folder's tests ({"gcs", "dashboard", "temp"}), started like a real
    cluster so that `ray job submit` and subprocess drivers can join it."""
    return _RAY_HEAD.start()


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory):
    from recaption.tiny import build_tiny_captioner
    return build_tiny_captioner(str(tmp_path_factory.mktemp("captioner") / "tiny-qwen25vl"))


@pytest.fixture(scope="session")
def chain(corpus, tiny_captioner, tmp_path_factory):
    """One uninterrupted run of every stage, shared by the tests that inspect its output."""
    from pipeline import run
    from pipeline.config import from_dict

    out = str(tmp_path_factory.mktemp("chain") / "run")
    cfg = from_dict(config_dict(corpus.urls_csv, out, tiny_captioner, _RAY_HEAD.start()["gcs"]))
    summary = run.run(cfg)
    return cfg, summary
