"""The parameter registry: one spelling, unit, default with its source and valid range per parameter."""

from moirestm.errors import MoireSTMError
from moirestm.parameters import parameter, validate

u = parameter("hubbard_u_ev")
print(u.name, u.unit, u.default, "valid", u.range_text(), "| source:", u.source)
print("dielectric default", parameter("dielectric").default, "from", parameter("dielectric").source)
try:
    validate("dielectric", 0.0, where="my script")
except MoireSTMError as exc:  # the same one-line message the CLI prints
    print("refused:", exc)
