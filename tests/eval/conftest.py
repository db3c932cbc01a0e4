import pytest


@pytest.fixture(scope="session")
def blind_export(tmp_path_factory, megatron_single_process):
    from eval_helpers import write_blind_export

    return write_blind_export(tmp_path_factory.mktemp("eval") / "rose-step0")


@pytest.fixture(scope="session")
def blind_vlora_export(tmp_path_factory, megatron_single_process):
    from eval_helpers import write_blind_export

    return write_blind_export(tmp_path_factory.mktemp("eval") / "vlora-step0", "vlora")
