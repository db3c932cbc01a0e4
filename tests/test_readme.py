"""Every command README.md gives a user runs somewhere: here, in the main job's end-to-end test,
or in the test named beside it. A README edit that adds an unchecked command fails this test."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# (the command's pattern, the file that runs it, a string that file must contain)
RUNNERS = [
    (r"bash scripts/test\.sh", ".ci/run", "bash scripts/test.sh"),
    (r"bash scripts/main\.sh( --size smallest)?", "tests/mainjob/test_main_job.py",
     '"mainjob.run", "--method", method, "--size", "smallest"'),
    (r"bash scripts/main\.sh --method (llava|vlora|vora)", "tests/mainjob/test_main_job.py",  # -m slow
     '@pytest.mark.parametrize("method", ["llava", "vlora", "vora"])'),
    (r"\.venv/bin/(python (pipeline/run\.py|-m megatron_ext\.(export|evaluate))|torchrun --nnodes=1 --rdzv-backend=c10d) .*",
     "tests/mainjob/test_main_job.py", "test_the_readme_shows_the_commands_the_main_job_ran"),
    (r"ray job submit --address \S+ --working-dir \. -- python pipeline/\w+\.py --config \S+",
     "tests/pipeline/test_pipeline_cli.py", '"job", "submit"'),
    (r"sbatch --nodes \d+ launch/slurm/s2\.sh", "tests/train/test_slurm.py", "launch"),  # the dry run below
    (r"DRY_RUN=1 bash launch/slurm/s2\.sh", "tests/test_readme.py", "DRY_RUN=1 bash launch/slurm/s2.sh"),
    (r"\.venv/bin/python -m megatron_ext\.flops .*", "tests/test_readme.py", "megatron_ext.flops"),
]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def _readme_line(prefix: str) -> str:
    (line,) = [c for c in readme_commands() if c.startswith(prefix)]
    return line


def test_every_readme_command_has_a_runner():
    commands = readme_commands()
    assert len(commands) >= 10
    for cmd in commands:
        runners = [(path, marker) for pattern, path, marker in RUNNERS if re.fullmatch(pattern, cmd)]
        assert runners, f"README command not run by any test: {cmd}"
        for path, marker in runners:
            assert marker in (ROOT / path).read_text(), (cmd, path)


def test_the_main_job_flags_in_the_readme_are_the_cli_s():
    from mainjob.run import parser

    main_sh = (ROOT / "scripts" / "main.sh").read_text()
    assert 'exec .venv/bin/python -m mainjob.run "$@"' in main_sh
    for cmd in readme_commands():
        if cmd.startswith("bash scripts/main.sh"):
            parser().parse_args(cmd.split()[2:])  # exits on an unknown flag or choice


def test_the_slurm_dry_run_prints_the_torchrun_commands():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(SLURM_JOB_NODELIST="node-a,node-b", SLURM_NNODES="2", SLURM_JOB_ID="42")
    cmd = _readme_line("DRY_RUN=1 bash launch/slurm/s2.sh")
    out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "torchrun" in out.stdout and "configs/train/rose/s2.yaml" in out.stdout
    assert "train.init_from=" in out.stdout


def test_the_flops_command_prints_the_breakdown():
    cmd = _readme_line(".venv/bin/python -m megatron_ext.flops").split()
    out = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "GFLOPs" in out.stdout or "GFLOP" in out.stdout
