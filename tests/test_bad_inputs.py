"""Bad input across every command: one line naming the problem, a non-zero exit, nothing lost.

Each case runs one command on a folder of existing files (a dataset store, a solution, a
trained run, a user's text file, a foreign PNG, a truncated HDF5 file, a read-only folder ...)
and checks that the command fails with one line on standard error that names the problem, a
non-zero exit code, and that every file in the folder is byte-identical afterwards (and that
no new file appeared: no half-made output).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from moirestm.cli import app  # noqa: E402

FAIL_ENGINE = textwrap.dedent('''
    def engine(task):
        """Every sample of the task fails (or only U = 0 with the environment's partial flag)."""
        return [{"key": s["key"], "params": s["params"], "status": "failed", "error": "synthetic failure"}
                if not (s["params"].get("seed") == 1 and s["params"]["hubbard_u_ev"] > 0) else
                {"key": s["key"], "params": s["params"], "status": "ok", "error": "",
                 "arrays": {"ft_image": __import__("numpy").ones((8, 8), "float32"),
                            "kx_nm": __import__("numpy").linspace(-1, 1, 8),
                            "ky_nm": __import__("numpy").linspace(-1, 1, 8)}, "results": {}}
                for s in task["samples"]]
''')


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of files of every kind, built once."""
    from moirestm.hamiltonian import TightBinding
    from moirestm.lattice import TBGLattice
    from moirestm.learn import train
    from moirestm.learn.synthetic import make_synthetic_store
    from moirestm.meanfield import Interaction, solve

    w = tmp_path_factory.mktemp("world")
    make_synthetic_store(w / "data.h5", u_values=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5), fillings=(-0.5, 0.5),
                         replicas=2, image_size=16, seed=1)
    solve(TightBinding(TBGLattice(1)), Interaction(hubbard_u_ev=1.0), kgrid=1, max_iterations=30).save(w / "sol.h5")
    kw = dict(split="random", progress=False, epochs=1, batch_size=8, kernel=False, min_epochs=0, patience=5)
    train(w / "data.h5", model="mlp", out=w / "runA", **kw)
    train(w / "data.h5", model="mlp", out=w / "runB", input_size=8, **kw)
    (w / "mismatch").mkdir()
    shutil.copy(w / "runA" / "run.json", w / "mismatch" / "run.json")
    shutil.copy(w / "runB" / "checkpoint.pt", w / "mismatch" / "checkpoint.pt")
    (w / "truncated_run").mkdir()
    (w / "truncated_run" / "checkpoint.pt").write_bytes((w / "runA" / "checkpoint.pt").read_bytes()[:300])
    (w / "empty_run").mkdir()
    (w / "notes.txt").write_text("my notes: do not lose\n")
    (w / "foreign.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (w / "truncated.h5").write_bytes((w / "data.h5").read_bytes()[:200])
    np.save(w / "img.npy", np.ones((16, 16), np.float32))
    np.save(w / "nan.npy", np.full((16, 16), np.nan, np.float32))
    np.save(w / "img3d.npy", np.ones((2, 3, 16, 16), np.float32))
    np.save(w / "map.npy", np.random.default_rng(0).random((32, 32)))
    ok = "[fixed]\nindex = 1\n[axes]\nhubbard_u_ev = [1.0, 2.0]\n"
    (w / "ok.toml").write_text(ok)
    (w / "bad_u.toml").write_text("[fixed]\nindex = 1\n[axes]\nhubbard_u_ev = [-1.0, 1.0]\n")
    (w / "bad_eps.toml").write_text("[fixed]\nindex = 1\ndielectric = 0\n[axes]\nhubbard_u_ev = [1.0]\n")
    (w / "bad_ft.toml").write_text(ok + "[ft]\nsize = 0\n")
    (w / "bad_index.toml").write_text("[fixed]\nindex = 1.5\n[axes]\nhubbard_u_ev = [1.0]\n")
    (w / "bad_type.toml").write_text("[fixed]\nindex = 1\ntemperature_k = \"warm\"\n[axes]\nhubbard_u_ev = [1.0]\n")
    (w / "ro").mkdir()
    (w / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield w
    (w / "ro").chmod(stat.S_IRWXU)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


# (arguments with {w} for the folder, words the one-line message must contain)
CASES = [
    # lattice
    ("lattice -i -1", "index"), ("lattice -i 2.5", "--index"), ("lattice -i abc", "--index"),
    ("lattice", "exactly one of --index or --angle"), ("lattice --angle 0", "twist_angle_deg"),
    ("lattice --angle nan", "finite"), ("lattice -i 3 --distance 0", "distance_nm"),
    ("lattice -i 3 --pressure 50", "pressure_gpa"), ("lattice -i 3 --distance 0.3 --pressure 1", "at most one"),
    ("lattice -i 3 --distance inf", "finite"), ("lattice -i 201", "<= 200"),
    # bands, dos, magic distance
    ("bands -i 200", "482404 atoms"), ("bands -i 2 --window -1", "window_ev"), ("bands -i 2 --window nan", "finite"),
    ("bands -i 2 --n-points 1", "n_points"), ("bands -i 2 --out {w}/data.png", "holds a FTLDOSStore"),
    ("bands -i 2 --out {w}/missing/b.png", "does not exist"), ("bands -i 2 --out {w}/ro/b.png", "not writable"),
    ("bands -i 2 --out {w}/notes.txt", "holds a text file"), ("bands -i 2 --out {w}/foreign.png", "not written by"),
    ("dos -i 2 --kgrid 0", "dos_kgrid"), ("dos -i 2 --broadening -0.1", "dos_broadening_ev"),
    ("dos -i 2 --out {w}/sol.png", "holds a MeanFieldSolution"), ("dos -i 2 --out {w}/dos.csv", "ending in .png"),
    ("magic-distance -i 2 --lower 0.4 --upper 0.3", "empty"), ("magic-distance -i 2 --lower 0.01", "distance_nm"),
    ("magic-distance -i 2 --out {w}/data.h5", "holds a FTLDOSStore"),
    # scf
    ("scf -i 1 -U 1e30 -o {w}/new.h5", "hubbard_u_ev"), ("scf -i 1 -U nan -o {w}/new.h5", "finite"),
    ("scf -i 1 --U -2 -o {w}/new.h5", "non-negative"), ("scf -i 1 --eps 0 -o {w}/new.h5", "dielectric"),
    ("scf -i 1 -T 0 -o {w}/new.h5", "temperature_k"), ("scf -i 1 -k 0 -o {w}/new.h5", "scf_kgrid"),
    ("scf -i 1 --filling 100 -o {w}/new.h5", "filling"), ("scf -i 1 --start bogus -o {w}/new.h5", "start"),
    ("scf -i 1 --coulomb yukawa -o {w}/new.h5", "coulomb"), ("scf -i 1 -o {w}/data.h5", "holds a FTLDOSStore"),
    ("scf -i 1 -o {w}/notes.txt", "holds a text file"), ("scf -i 1 -o {w}/missing/s.h5", "does not exist"),
    ("scf -i 1 -o {w}/ro/s.h5", "not writable"), ("scf -i 1 --from {w}/notes.txt -o {w}/new.h5", "notes.txt"),
    ("scf -i 1 --from {w}/truncated.h5 -o {w}/new.h5", "truncated.h5"),
    ("scf -i 1 --coulomb gated --gate-distance 0 -o {w}/new.h5", "gate_distance_nm"),
    ("scf -i 1 --max-iter 0 -o {w}/new.h5", "max_iterations"), ("scf -i 200 -o {w}/new.h5", "atoms"),
    ("scf -i 1 -U 2 --seed -1 -o {w}/new.h5", "seed"), ("scf -o {w}/new.h5 -i 1 -U abc", "-U"),
    # sweep-u
    ("sweep-u -i 1 --u-min 3 --u-max 1 -o {w}/su.png", "empty"), ("sweep-u -i 1 --u-step 0 -o {w}/su.png", "step"),
    ("sweep-u -i 1 --u-max 100 -o {w}/su.png", "hubbard_u_ev"),
    ("sweep-u -i 1 --directions sideways -o {w}/su.png", "directions"),
    ("sweep-u -i 1 -o {w}/su.png --table {w}/notes.txt", "holds a text file"),
    # ldos
    ("ldos {w}/notes.txt -o {w}/m.png", "notes.txt"), ("ldos {w}/data.h5 -o {w}/m.png", "FTLDOSStore"),
    ("ldos {w}/sol.h5 -o {w}/m.png --broadening 0", "broadening_ev"), ("ldos {w}/sol.h5 -o {w}/m.png --bias nan", "finite"),
    ("ldos {w}/sol.h5 -o {w}/m.png --kind triangle", "ldos_kind"), ("ldos {w}/sol.h5 -o {w}/notes.txt", "text file"),
    ("ldos {w}/sol.h5 -o {w}/m.png --save-ldos {w}/data.h5", "holds a FTLDOSStore"),
    ("ldos {w}/sol.h5 -o {w}/m.png --cells 0", "n_cells"), ("ldos {w}/truncated.h5 -o {w}/m.png", "truncated.h5"),
    ("ldos {w}/sol.h5 -o {w}/m.png --spin sideways", "spin"),
    # sweeps and datasets
    ("sweep show {w}/bad_u.toml", "hubbard_u_ev"), ("sweep show {w}/bad_eps.toml", "dielectric"),
    ("sweep show {w}/notes.txt", "TOML"), ("sweep show {w}/bad_ft.toml", "ft_size"),
    ("sweep show {w}/bad_index.toml", "index"), ("sweep show {w}/bad_type.toml", "temperature_k"),
    ("sweep show {w}/nothing.toml", "not found"), ("sweep run {w}/bad_u.toml -o {w}/new.h5", "hubbard_u_ev"),
    ("sweep run demo -o {w}/notes.txt", "holds a text file"), ("sweep run demo -o {w}/missing/x.h5", "does not exist"),
    ("sweep run {w}/ok.toml -o {w}/sol.h5", "MeanFieldSolution"),
    ("sweep run {w}/ok.toml -o {w}/new.h5 --workers 0", "workers"),
    ("dataset info {w}/notes.txt", "notes.txt"), ("dataset info {w}/truncated.h5", "truncated.h5"),
    ("dataset check {w}/sol.h5", "sol.h5"), ("dataset import {w}/notes.txt -o {w}/sol.h5", "MeanFieldSolution"),
    ("dataset import {w}/notes.txt -o {w}/new.h5 --size 0", "ft_size"),
    ("dataset merge {w}/notes.txt {w}/data.h5", "holds a text file"),
    ("dataset export {w}/data.h5 {w}/notes.txt", "not a folder"), ("dataset export {w}/notes.txt {w}/png", "notes.txt"),
    # learning
    ("train {w}/data.h5 --input-size 0 -o {w}/new_run", "input_size"), ("train {w}/data.h5 --lr nan -o {w}/new_run", "lr"),
    ("train {w}/data.h5 --lr -1 -o {w}/new_run", "lr"), ("train {w}/data.h5 --epochs 0 -o {w}/new_run", "epochs"),
    ("train {w}/data.h5 --batch-size 0 -o {w}/new_run", "batch_size"),
    ("train {w}/data.h5 --model transformer -o {w}/new_run", "model"),
    ("train {w}/data.h5 --target hubbard_u -o {w}/new_run", "unknown parameter 'hubbard_u'"),
    ("train {w}/data.h5 --target start -o {w}/new_run", "not a numeric"),
    ("train {w}/notes.txt -o {w}/new_run", "notes.txt"), ("train {w}/sol.h5 -o {w}/new_run", "sol.h5"),
    ("train {w}/data.h5 -o {w}/notes.txt --epochs 1", "notes.txt"), ("train {w}/data.h5 -o {w}/ro/run", "not writable"),
    ("train {w}/data.h5 --max-minutes 0 -o {w}/new_run", "max_minutes"),
    ("train {w}/data.h5 --threads 0 -o {w}/new_run", "threads"),
    ("train {w}/data.h5 -o {w}/runA --epochs 1", "already holds a run"),
    ("evaluate {w}/notes.txt", "checkpoint"), ("evaluate {w}/runA --part holdout", "part"),
    ("evaluate {w}/runA --data {w}/sol.h5", "sol.h5"),
    ("predict {w}/mismatch {w}/img.npy", "another model configuration"), ("predict {w}/runA {w}/nan.npy", "NaN"),
    ("predict {w}/runA {w}/img3d.npy", "2-D"), ("predict {w}/runA {w}/img.npy --pixel-nm -1", "pixel_nm"),
    ("predict {w}/empty_run {w}/img.npy", "no checkpoint"), ("predict {w}/truncated_run {w}/img.npy", "checkpoint"),
    ("predict {w}/runA {w}/missing.npy", "not found"),
    ("baselines {w}/data.h5 --split bogus", "split"), ("baselines {w}/notes.txt", "notes.txt"),
    # explanation
    ("explain {w}/runA --max-samples 0", "max_samples"), ("explain {w}/runA --n-steps 0", "n_steps"),
    ("explain {w}/runA --method bogus", "attribution_method"), ("analyze {w}/notes.txt -o {w}/an", "notes.txt"),
    ("analyze {w}/data.h5 --method bogus -o {w}/an", "crossover_method"),
    ("analyze {w}/data.h5 --max-samples 0 -o {w}/an", "max_samples"),
    ("report {w}/runA --out {w}/notes.txt", "holds a text file"),
    ("report {w}/runA --out {w}/missing/r.html", "does not exist"),
    # measured maps
    ("stm-info {w}/missing.sxm", "missing.sxm"), ("calibrate {w}/notes.txt -o {w}/cal", "notes.txt"),
    ("calibrate {w}/map.npy --pixel-nm abc -o {w}/cal", "--pixel-nm"),
    ("calibrate {w}/map.npy --pixel-nm 0.1 --line-order 99 -o {w}/cal", "line_order"),
    ("calibrate {w}/map.npy --direction sideways -o {w}/cal", "direction"),
]


@pytest.mark.parametrize("args, words", CASES, ids=[c[0].replace("{w}/", "") for c in CASES])
def test_bad_input_fails_in_one_line_and_loses_nothing(world, args, words):
    before = _snapshot(world)
    res = CliRunner().invoke(app, args.format(w=world).split())
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code != 0, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert words in lines[0], lines[0]
    assert _snapshot(world) == before


def test_every_option_maps_to_the_registry():
    """Each command option carries a registered parameter or is one of the plain I/O switches."""
    from typer.main import get_command

    from moirestm.cli._app import registry_name
    from moirestm.dataset.sweep import AXES, FIXED_EXTRAS, FT_DEFAULTS, STM_DEFAULTS
    from moirestm.parameters import REGISTRY, table_parameter

    plain = {"out", "as_json", "json_out", "overwrite", "force", "resume", "data", "run", "key", "channel",
             "samples", "scheduler", "retry_failed", "table", "save_ldos", "save_map", "start_from",
             "simulated", "target", "baselines", "toml", "status", "colormap", "replace",
             "pixel_spec"}  # pixel_spec: one or two numbers, each validated as the registry's pixel_nm
    unmapped = []

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{prefix} {name}")
        for p in getattr(cmd, "params", []):
            if p.param_type_name == "option" and p.name not in plain and registry_name(p.name) is None:
                unmapped.append(f"{prefix} --{p.name}")

    walk(get_command(app), "moirestm")
    assert unmapped == []
    for key in {**AXES, **FIXED_EXTRAS}:
        assert key in REGISTRY, key
    for table, keys in (("ft", FT_DEFAULTS), ("stm", STM_DEFAULTS)):
        for key in keys:
            table_parameter(table, key)


def test_sweep_exit_codes_all_and_partly_failed(tmp_path, monkeypatch):
    (tmp_path / "failengine.py").write_text(FAIL_ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    for seed, code, words in ((0, 1, "all 2 samples computed failed (2 x synthetic failure)"),
                              (1, 0, "1 of 2 samples failed (1 x synthetic failure)")):
        sweep = tmp_path / f"s{seed}.toml"
        sweep.write_text(f'engine = "failengine:engine"\n[fixed]\nindex = 1\nseed = {seed}\n'
                         "[axes]\nhubbard_u_ev = [0.0, 1.0]\n")
        res = runner.invoke(app, ["sweep", "run", str(sweep), "-o", str(tmp_path / f"s{seed}.h5"),
                                  "--scheduler", "synchronous", "--json"])
        assert res.exit_code == code, res.output
        assert words in res.stderr
        assert json.loads(res.stdout)["written_failed"] == (2 if seed == 0 else 1)


def test_overwrite_flag_replaces_another_kind(world, tmp_path):
    target = tmp_path / "notes.png"
    target.write_text("scratch")
    res = CliRunner().invoke(app, ["bands", "-i", "1", "--n-points", "4", "--out", str(target), "--overwrite"])
    assert res.exit_code == 0, res.output
    from moirestm.io import FIGURE, file_kind

    assert file_kind(target) == FIGURE and file_kind(tmp_path / "notes.h5") == "BandStructure"


def test_written_files_get_the_umask_mode_and_keep_an_existing_mode(tmp_path):
    import os

    from moirestm.io import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "new.json", {"a": 1}, "Note")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not tempfile's 0600
        os.chmod(path, 0o640)
        write_json(path, {"a": 2}, "Note")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
