"""The runnable examples in docs/examples run as they are and write what they say."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.py"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    if script.name == "bands_and_plot.py":
        assert (tmp_path / "bands.png").stat().st_size > 1000 and (tmp_path / "bands.h5").is_file()
    if script.name in ("parameters.py", "results.py"):
        assert "refused:" in out
