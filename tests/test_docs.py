"""The documentation cannot drift: CLI reference, commands quoted in the docs, links, examples."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from skuniad.cli import app
from skuniad.datasets import write_synthetic

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = ROOT / "examples"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "docs" / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_typer_app():
    generator = _load_generator()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert generator.render() == committed, "docs/cli.md is stale: run python docs/generate_cli.py"


def _command_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    return {
        name: {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for name, command in group.commands.items()
    }


# `skuniad CMD ...`, `python -m skuniad CMD ...`, `torchrun ... -m skuniad CMD ...`
_COMMAND_LINE = re.compile(r"^\s*(?:\$\s+)?(?:\S+\s+-m\s+|torchrun\s.*?-m\s+)?skuniad\s+(\S+)(.*)$")


def _quoted_commands():
    """(file, line, match) for every skuniad command in the docs' code blocks and shell examples."""
    for path in [*DOCS, *EXAMPLES.glob("*.sh")]:
        text = path.read_text(encoding="utf-8")
        blocks = [text] if path.suffix == ".sh" else re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                match = _COMMAND_LINE.match(line.split(" #")[0])  # without a trailing comment
                if match and not match.group(1).startswith("-"):
                    yield path.relative_to(ROOT), line.strip(), match


def test_commands_quoted_in_the_docs_exist_with_those_options():
    options = _command_options()
    seen = set()
    for path, line, match in _quoted_commands():
        command, rest = match.groups()
        assert command in options, f"{path}: unknown command in {line!r}"
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
            assert option in options[command], f"{path}: {command} has no {option}: {line!r}"
        seen.add(path)
    assert len(seen) >= 4  # README, getting started, the CLI reference, the shell example


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_relative_links_and_anchors_resolve():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.relative_to(ROOT)}: broken link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked.read_text(encoding="utf-8")), (
                    f"{path.relative_to(ROOT)}: no heading for #{anchor} in {linked.name}"
                )


# ---------------------------------------------------------------- examples
def _run(args: list[str], cwd: Path) -> str:
    # one thread: on a busy 2-core CI machine two threads per example run 2-3x slower
    env = {**os.environ, "SKUNIAD_EXAMPLE_TINY": "1", "PYTHON": sys.executable}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


PYTHON_EXAMPLES = ["quickstart.py", "sklearn_pipeline.py", "model_selection.py", "visualize.py"]


def test_every_example_is_run_here():
    tested = {*PYTHON_EXAMPLES, "evaluate_mvtec.sh"}
    assert {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")} == tested


@pytest.mark.slow
@pytest.mark.parametrize("example", PYTHON_EXAMPLES)
def test_python_example_runs_with_tiny_settings(example, tmp_path):
    args = [sys.executable, str(EXAMPLES / example)]
    if example != "model_selection.py":  # keeps everything in memory
        args += ["--output", str(tmp_path / "out")]
    out = _run(args, tmp_path)
    if example == "quickstart.py":
        assert "image AUROC" in out and (tmp_path / "out" / "model.skuniad").is_file()
    if example == "sklearn_pipeline.py":
        assert out.rstrip().endswith("reloaded scores agree: True")
    if example == "model_selection.py":
        assert "best: {'jitter_scale'" in out
    if example == "visualize.py":
        overlays = list((tmp_path / "out" / "overlays").glob("*.png"))
        assert len(overlays) == 16  # 4 categories x 4 test images


@pytest.mark.slow
def test_evaluate_mvtec_script_runs_with_tiny_settings(tmp_path):
    root = write_synthetic(tmp_path / "data", categories=("stripes", "dots"), n_train=4, n_test=4)
    out = _run(["bash", str(EXAMPLES / "evaluate_mvtec.sh"), str(root), "out"], tmp_path)
    assert "mean" in out
    results = tmp_path / "out"
    assert (results / "results.md").is_file() and (results / "model.skuniad").is_file()
    assert len(list((results / "overlays").rglob("*.png"))) == 2 * 3  # 3 per category
