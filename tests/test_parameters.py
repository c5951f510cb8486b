"""The parameter registry: one spelling, defaults from constants, ranges enforced everywhere."""

import math

import pytest

from moirestm import constants
from moirestm.errors import MoireSTMError
from moirestm.parameters import REGISTRY, atoms_for_index, canonical, parameter, validate


def test_defaults_come_from_constants():
    assert parameter("dielectric").default == constants.DIELECTRIC_CONSTANT
    assert parameter("distance_nm").default == constants.INTERLAYER_DISTANCE_NM
    assert parameter("temperature_k").default == constants.TEMPERATURE_K
    assert parameter("broadening_ev").default == constants.LDOS_BROADENING_EV
    assert parameter("ft_size").default == constants.FT_IMAGE_SIZE


def test_every_entry_is_complete_and_its_default_valid():
    flags = [p.flag for p in REGISTRY.values() if not p.alias_of]
    for p in REGISTRY.values():
        assert p.name and p.source and p.help and p.flag.startswith("--"), p.name
        assert p.kind in ("float", "int", "str", "bool"), p.name
        assert p.validate(p.default) == p.default, p.name
        if p.alias_of:
            assert p.alias_of in REGISTRY and not REGISTRY[p.alias_of].alias_of
    duplicated = {f for f in flags if flags.count(f) > 1}
    assert duplicated == set(), duplicated


@pytest.mark.parametrize("name, value, words", [
    ("hubbard_u_ev", 1e30, "<= 20 eV"), ("hubbard_u_ev", -1, ">= 0"), ("dielectric", 0, ">= 1"),
    ("lr", math.nan, "finite"), ("lr", 0.0, "> 0"), ("input_size", 0, ">= 8"), ("index", 201, "<= 200"),
    ("index", 2.5, "integer"), ("window_ev", -1, "> 0"), ("start", "xyz", "one of"), ("filling", "a", "number"),
    ("epochs", True, "number"), ("temperature_k", math.inf, "finite"), ("fock", "maybe", "true or false"),
])
def test_bad_values_name_parameter_value_and_range(name, value, words):
    with pytest.raises(MoireSTMError) as info:
        validate(name, value, where="here")
    text = str(info.value)
    assert text.startswith(f"here: {name}") and words in text and "\n" not in text


def test_coercion_and_optional():
    assert validate("index", 9.0) == 9 and isinstance(validate("index", 9.0), int)
    assert validate("input_size", None) is None
    assert validate("fock", "true") is True
    with pytest.raises(MoireSTMError, match="must be given"):
        validate("hubbard_u_ev", None)


def test_check_range_and_unknown_names():
    parameter("hubbard_u_ev").check_range(0.0, 6.0)
    with pytest.raises(MoireSTMError, match="<= 20"):
        parameter("hubbard_u_ev").check_range(0.0, 60.0)
    with pytest.raises(MoireSTMError, match="empty"):
        parameter("hubbard_u_ev").check_range(3.0, 1.0)
    with pytest.raises(MoireSTMError, match="unknown parameter 'hubbard_u'; known: "):
        parameter("hubbard_u")
    assert canonical("kgrid") == "scf_kgrid" and canonical("dielectric") == "dielectric"


def test_atom_count():
    assert atoms_for_index(9) == 1084 and atoms_for_index(200) == 482404


def test_command_defaults_are_valid_registered_values():
    """Each command's own defaults lie in the registry's ranges, and the configs take theirs from the registry."""
    from moirestm.learn.posterior import PosteriorConfig
    from moirestm.learn.train import TrainConfig
    from moirestm.parameters import COMMAND_DEFAULTS, default_of, validate

    for command, values in COMMAND_DEFAULTS.items():
        for name, value in values.items():
            assert validate(name, value, command) == value
    assert PosteriorConfig().epochs == COMMAND_DEFAULTS["infer"]["epochs"] != TrainConfig().epochs
    assert TrainConfig().lr == default_of("lr") and PosteriorConfig().embedding == default_of("embedding")
