"""``solve`` called from Python validates its arguments by the parameter registry, as the CLI does."""

import math

import pytest

from moirestm import constants
from moirestm.errors import MoireSTMError
from moirestm.hamiltonian import SlaterKoster, TightBinding
from moirestm.lattice import TBGLattice, monolayer_graphene
from moirestm.meanfield import Interaction, solve, sweep_u


@pytest.fixture(scope="module")
def tbg1():
    return TightBinding(TBGLattice(1))


@pytest.mark.parametrize("kwargs, words", [
    ({"filling": math.nan}, "solve: filling must be finite"),
    ({"filling": math.inf}, "solve: filling must be finite"),
    ({"filling": "half"}, "solve: filling must be a number"),
    ({"filling": 9.0}, "solve: filling must be <= 8 e/cell"),
    ({"temperature_k": -1}, "solve: temperature_k must be positive"),
    ({"temperature_k": 0.0}, "solve: temperature_k must be positive"),
    ({"temperature_k": math.nan}, "solve: temperature_k must be finite"),
    ({"temperature_k": 1e5}, "solve: temperature_k must be <= 10000 K"),
    ({"filling": None, "mu_ev": math.nan}, "solve: mu_ev must be finite"),
    ({"filling": None, "mu_ev": 50.0}, "solve: mu_ev must be <= 10 eV"),
    ({"kgrid": 0}, "solve: kgrid must be >= 1"),
    ({"kgrid": 513}, "solve: kgrid must be <= 512"),
    ({"kgrid": True}, "solve: kgrid must be a number"),
    ({"seed": -1}, "solve: seed must be non-negative"),
    ({"mixing": 1.5}, "solve: mixing must be <= 1"),
    ({"mixing": 0.0}, "solve: mixing must be positive"),
    ({"density_tol": 0.0}, "solve: density_tol must be positive"),
    ({"energy_tol_ev": math.inf}, "solve: energy_tol_ev must be finite"),
    ({"max_iterations": 0}, "solve: max_iterations must be >= 1"),
    ({"diis_history": 0}, "solve: diis_history must be >= 1"),
    ({"start_moment": 2.0}, "solve: start_moment must be <= 1"),
    ({"max_seconds": 0.0}, "max_seconds must be a positive number"),
])
def test_solve_names_the_bad_parameter_in_one_line(tbg1, kwargs, words):
    with pytest.raises(MoireSTMError) as info:
        solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), **kwargs)
    assert str(info.value).startswith(words) and "\n" not in str(info.value)


def test_filling_beyond_a_small_cell_is_impossible():
    tb = TightBinding(monolayer_graphene(), SlaterKoster(cutoff_nm=0.2))  # 2 sites: |filling| < 2
    with pytest.raises(MoireSTMError, match="solve: filling 2.5 is impossible: .* between -2 and 2"):
        solve(tb, Interaction(hubbard_u_ev=1.0, coulomb="none"), filling=2.5)


def test_sweep_u_passes_the_check_on(tbg1):
    with pytest.raises(MoireSTMError, match="^solve: temperature_k must be positive"):
        sweep_u(tbg1, Interaction(coulomb="none"), [0.0, 1.0], temperature_k=-1)


def test_valid_values_are_coerced_as_on_the_command_line(tbg1):
    sol = solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), kgrid=2.0, seed=3.0, max_iterations=50.0,
                start="pm")
    assert sol.params["kgrid"] == 2 and isinstance(sol.params["kgrid"], int) and sol.params["seed"] == 3
    assert sol.params["temperature_k"] == constants.TEMPERATURE_K and sol.converged


def test_every_registered_numeric_argument_of_solve_is_checked(tbg1):
    import inspect

    from moirestm.parameters import REGISTRY

    names = [n for n in inspect.signature(solve).parameters if n in REGISTRY and REGISTRY[n].kind != "str"]
    assert {"filling", "mu_ev", "kgrid", "temperature_k", "seed", "mixing"} <= set(names)
    for name in names:
        kwargs = {name: math.nan, **({"filling": None} if name == "mu_ev" else {})}
        with pytest.raises(MoireSTMError, match=f"^solve: {name} must be finite"):
            solve(tbg1, Interaction(hubbard_u_ev=1.0, coulomb="none"), **kwargs)
