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


def test_only_the_plot_layer_imports_matplotlib():
    src = Path(__file__).resolve().parents[1] / "src" / "moirestm"
    allowed = {"plot", "dataset/export.py"}  # export: colour PNGs of the stored images (colormaps only)
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if "matplotlib" in p.read_text()
                 and not any(str(p.relative_to(src)).startswith(a) for a in allowed)]
    assert offenders == []


def test_package_root_exposes_entry_points_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, moirestm as ms; assert 'torch' not in sys.modules; "
            "assert callable(ms.solve) and callable(ms.band_structure) and ms.TBGLattice(1).n_atoms == 28; "
            "assert 'torch' not in sys.modules; print(sorted(ms.ENTRY_POINTS)[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_help_lists_commands_in_pipeline_order():
    from typer.testing import CliRunner

    from moirestm.cli import app

    text = CliRunner().invoke(app, ["--help"]).output
    order = ["lattice", "bands", "scf", "ldos", "sweep", "train", "predict", "explain", "report", "calibrate"]
    positions = [text.index(f"  {name} ") for name in order]
    assert positions == sorted(positions)
