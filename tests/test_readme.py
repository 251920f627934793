"""The README's set-up commands are the ones CI runs, so they cannot silently rot."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_test_command_is_the_one_ci_runs():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip().startswith("pip install")]
    assert ci_lines == ['pip install "torch>=2.11" setuptools wheel ninja numpy cython && '
                        'pip install --no-build-isolation -e ".[test]" && python -m pytest']
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert ci_lines[0] in blocks


def test_readme_demo_command_installs_and_runs_the_demo():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert ('pip install "torch>=2.11" setuptools wheel ninja numpy cython && '
            'pip install --no-build-isolation ".[demo]" && deconvnet demo') in blocks


def test_readme_names_every_cli_subcommand():
    from deconvnet_ext.cli import SUBCOMMANDS
    text = (ROOT / "README.md").read_text()
    for name in SUBCOMMANDS:
        assert f"deconvnet {name}" in text, name


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs as written (in a scratch directory)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), {"__name__": f"readme{i}"})
