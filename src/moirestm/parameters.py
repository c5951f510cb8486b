"""The one parameter registry: every physical and numerical parameter declared once.

Each :class:`Parameter` has one spelling (``hubbard_u_ev``), a unit, a default taken from
:mod:`moirestm.constants` with its literature source, a valid range, a CLI flag and help text.
The CLI, the sweep TOML keys, the stored sample parameters and the learning targets take their
names, defaults and validation from here, so a value outside its range fails the same way
wherever it enters::

    >>> from moirestm.parameters import validate
    >>> validate("hubbard_u_ev", 2.5)
    2.5
    >>> validate("dielectric", 0)
    Traceback (most recent call last):
    ...
    moirestm.errors.MoireSTMError: dielectric must be >= 1, got 0 (dielectric constant; valid range [1, 1000])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import constants as C
from .errors import MoireSTMError

_MT = "Moon & Koshino, PRB 85, 195458 (2012)"
_TS = "Tanksale & Stauber, arXiv:2602.18890"
_MODEL = "model default"
_NUMERIC = "numerical choice"


@dataclass(frozen=True)
class Parameter:
    """One parameter: name, unit, default with its source, valid range, CLI flag, help.

    ``low``/``high`` bound the valid range (inclusive unless ``low_open``/``high_open``); ``None``
    leaves that side open. ``kind`` is ``"float"``, ``"int"``, ``"str"`` or ``"bool"``; ``choices``
    lists the allowed strings. ``optional`` parameters also accept ``None`` (their default may be
    ``None``). ``alias_of`` names the canonical parameter of a legacy spelling.
    """

    name: str
    unit: str
    default: object
    source: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    kind: str = "float"
    flag: str = ""
    help: str = ""
    choices: tuple = ()
    optional: bool = False
    alias_of: str = ""

    def range_text(self) -> str:
        """The valid range in words, e.g. ``[0, 20] eV``."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        text = f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}" \
               f"{')' if self.high_open or self.high is None else ']'}"
        return f"{text} {self.unit}".rstrip()

    def _fail(self, where: str, text: str, extra: str = ""):
        prefix = f"{where}: " if where else ""
        notes = "; ".join(t for t in (self.help, extra) if t)
        raise MoireSTMError(f"{prefix}{self.name} {text}" + (f" ({notes})" if notes else ""))

    def validate(self, value, where: str = ""):
        """``value`` coerced to the parameter's kind; MoireSTMError naming parameter, value and range."""
        if value is None:
            if self.optional:
                return None
            self._fail(where, "must be given, got None")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            self._fail(where, f"must be true or false, got {value!r}")
        if self.kind == "str":
            if not isinstance(value, str):
                self._fail(where, f"must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                self._fail(where, f"must be {self.range_text()}, got {value!r}")
            return value
        if isinstance(value, (bool, str, bytes)):
            self._fail(where, f"must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            self._fail(where, f"must be a number, got {value!r}")
        if not math.isfinite(number):
            self._fail(where, f"must be finite, got {value!r}")
        if self.kind == "int":
            if not number.is_integer():
                self._fail(where, f"must be an integer, got {value!r}")
            number = int(number)
        self._check_bounds(number, where, value)
        return number

    def _check_bounds(self, number: float, where: str, shown) -> None:
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            words = ("positive" if self.low_open else "non-negative") if self.low == 0 else ""
            bound = f"{'>' if self.low_open else '>='} {self.low:g}{unit}"
            self._fail(where, f"must be {f'{words} ({bound})' if words else bound}, got {shown!r}",
                       f"valid range {self.range_text()}" if self.high is not None else "")
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            self._fail(where, f"must be {'<' if self.high_open else '<='} {self.high:g}{unit}, got {shown!r}",
                       f"valid range {self.range_text()}" if self.low is not None else "")

    def check_range(self, low, high, where: str = "") -> None:
        """A prior or axis ``[low, high]`` must lie inside the valid range (and ``low <= high``)."""
        lo = self.validate(low, where)
        hi = self.validate(high, where)
        if self.kind in ("str", "bool"):
            return
        if lo > hi:
            self._fail(where, f"range is empty: low {low!r} > high {high!r}")


def _p(name, unit, default, source, low=None, high=None, **kw) -> Parameter:
    kw.setdefault("flag", "--" + name.replace("_", "-"))
    return Parameter(name, unit, default, source, low, high, **kw)


def _s(name, default, choices, help, optional=False, **kw) -> Parameter:
    return _p(name, "", default, _MODEL, kind="str", choices=tuple(choices), help=help, optional=optional, **kw)


#: Largest commensurate index accepted (482 404 atoms); each command checks the memory cost again.
MAX_INDEX = 200

_ENTRIES = [
    # ---------------------------------------------------------------- lattice
    _p("index", "", C.REFERENCE_INDEX, "reference study (i = 9: 3.48 deg, 1084 atoms), " + _TS, 0, MAX_INDEX,
       kind="int", help="commensurate index i of the (i, i+1) family"),
    _p("twist_angle_deg", "deg", None, "derived from index", 0.0, 60.0, low_open=True, flag="--angle",
       optional=True, help="twist angle (the nearest commensurate index is used)"),
    _p("distance_nm", "nm", C.INTERLAYER_DISTANCE_NM, "graphite interlayer distance, " + _MT, 0.15, 1.0,
       help="interlayer distance"),
    _p("pressure_gpa", "GPa", 0.0, "graphite c-axis EOS valid to ~11 GPa (Hanfland et al., PRB 39, 12598 "
       "(1989))", 0.0, C.GRAPHITE_MAX_PRESSURE_GPA, help="hydrostatic pressure (graphite c-axis EOS)"),
    # ---------------------------------------------------------------- tight binding
    _p("n_points", "", 60, _NUMERIC, 2, 100_000, kind="int", help="k-points along the band path"),
    _p("window_ev", "eV", 0.3, _NUMERIC, 0.0, 100.0, low_open=True, flag="--window",
       help="energy window of the band plot around E_F"),
    _p("dos_kgrid", "", 6, _NUMERIC, 1, 256, kind="int", flag="--kgrid",
       help="n of the n x n Monkhorst-Pack grid of the DOS"),
    _p("dos_broadening_ev", "eV", 0.005, _NUMERIC, 0.0, 1.0, low_open=True, flag="--broadening",
       help="Gaussian broadening of the DOS"),
    # ---------------------------------------------------------------- interaction
    _p("hubbard_u_ev", "eV", 0.0, f"U range 0..{C.HUBBARD_U_RANGE_EV[1]:g} eV studied in " + _TS, 0.0, 20.0,
       help="onsite Hubbard U"),
    _p("dielectric", "", C.DIELECTRIC_CONSTANT, _TS, 1.0, 1000.0, help="dielectric constant"),
    _s("coulomb", "ewald", ("ewald", "gated", "none"), "long-range Coulomb kernel"),
    _p("gate_distance_nm", "nm", C.GATE_DISTANCE_NM, "dual-gated hBN devices (model default, constants)", 0.0,
       1.0e4, low_open=True, help="distance of each metallic gate for coulomb = gated"),
    _p("fock", "", False, _MODEL, kind="bool", help="add the Fock (exchange) term of the long-range kernel"),
    _p("short_distance_nm", "nm", C.COULOMB_SHORT_DISTANCE_NM, "Ohno, Theor. Chim. Acta 2, 219 (1964)", 0.0, 10.0,
       low_open=True, help="regularisation length of the long-range kernel"),
    _p("fock_cutoff_nm", "nm", C.FOCK_CUTOFF_NM, "constants.FOCK_CUTOFF_NM", 0.0, 10.0, low_open=True,
       help="cutoff radius of the Fock term"),
    _p("ewald_alpha_per_nm", "1/nm", None, "chosen from the cell", 0.0, 1.0e3, low_open=True, optional=True,
       help="Ewald splitting parameter"),
    # ---------------------------------------------------------------- mean field
    _p("filling", "e/cell", 0.0, "charge neutrality", -8.0, 8.0,
       help="electrons per moiré cell relative to neutrality"),
    _p("mu_ev", "eV", None, "fixed filling by default", -10.0, 10.0, optional=True,
       help="fixed chemical potential (instead of filling)"),
    _p("temperature_k", "K", C.TEMPERATURE_K, "constants.TEMPERATURE_K", 0.0, 1.0e4, low_open=True,
       help="electronic temperature"),
    _p("scf_kgrid", "", getattr(C, "SCF_KGRID", 1), "benchmarks/bench_kgrid.py (docs/meanfield.md)", 1, 512,
       kind="int", help="n of the n x n Monkhorst-Pack grid of the self-consistency"),
    _p("kgrid", "", getattr(C, "SCF_KGRID", 1), "legacy spelling of scf_kgrid", 1, 512, kind="int",
       alias_of="scf_kgrid", help="legacy spelling of scf_kgrid (a sweep's legacy kgrid also sets ldos_kgrid)"),
    _p("ldos_kgrid", "", getattr(C, "LDOS_KGRID", 1), "benchmarks/bench_kgrid.py (docs/meanfield.md)", 1, 256,
       kind="int", help="n of the n x n Monkhorst-Pack grid of the non-self-consistent LDOS"),
    _s("start", "afm", ("pm", "fm", "afm", "layer_afm", "random"), "starting state of the self-consistency"),
    _p("seed", "", 0, _NUMERIC, 0, 2**32 - 1, kind="int", help="random seed"),
    _p("max_iterations", "", C.SCF_MAX_ITERATIONS, "constants.SCF_MAX_ITERATIONS", 1, 1_000_000, kind="int",
       flag="--max-iter", help="maximum self-consistency iterations"),
    _p("density_tol", "e", C.SCF_DENSITY_TOL, "constants.SCF_DENSITY_TOL", 0.0, 1.0, low_open=True,
       help="self-consistency tolerance on the max density change"),
    _p("energy_tol_ev", "eV", C.SCF_ENERGY_TOL_EV, "constants.SCF_ENERGY_TOL_EV", 0.0, 1.0, low_open=True,
       help="self-consistency tolerance on the free-energy change"),
    _p("mixing", "", C.SCF_MIXING, "constants.SCF_MIXING (Pulay 1980)", 0.0, 1.0, low_open=True,
       help="mixing fraction of the output density"),
    _p("diis_history", "", C.SCF_DIIS_HISTORY, "Pulay, Chem. Phys. Lett. 73, 393 (1980)", 1, 1000, kind="int",
       help="previous iterates kept by Pulay mixing"),
    _p("start_moment", "", C.SCF_START_MOMENT, "constants.SCF_START_MOMENT", 0.0, 1.0,
       help="initial local moment of the symmetry-broken starts"),
    _p("hubbard_u_step_ev", "eV", 0.5, _NUMERIC, 0.0, 20.0, low_open=True, flag="--u-step",
       help="U step of a U sweep"),
    _s("directions", "both", ("up", "down", "both"), "U-continuation direction(s) of a U sweep"),
    # ---------------------------------------------------------------- observables
    _p("bias_ev", "eV", 0.0, "Fermi level", -10.0, 10.0, help="sample bias relative to E_F"),
    _p("broadening_ev", "eV", C.LDOS_BROADENING_EV, "constants.LDOS_BROADENING_EV", 0.0, 1.0, low_open=True,
       help="LDOS broadening eta"),
    _s("ldos_kind", "lorentzian", ("lorentzian", "gaussian"), "LDOS line shape", flag="--kind"),
    _p("n_cells", "", 3, _NUMERIC, 1, 50, kind="int", flag="--cells", help="STM map size in moiré cells per side"),
    _p("pixels_per_nm", "1/nm", C.STM_PIXELS_PER_NM, "constants.STM_PIXELS_PER_NM", 0.0, 500.0, low_open=True,
       flag="--ppn", help="STM map resolution"),
    _p("orbital_width_nm", "nm", C.STM_ORBITAL_WIDTH_NM, "constants.STM_ORBITAL_WIDTH_NM", 0.0, 10.0,
       low_open=True, help="lateral width of each site's p_z Gaussian in the STM map"),
    _p("decay_per_nm", "1/nm", C.STM_DECAY_PER_NM, "Tersoff & Hamann, PRB 31, 805 (1985)", 0.0, 1.0e3,
       help="tunnelling decay constant"),
    _p("bias_index", "", 0, _NUMERIC, 0, None, kind="int", help="which bias of the LDOS the STM map shows"),
    _p("stm_enabled", "", True, _MODEL, kind="bool", flag="--stm", help="compute the real-space STM map"),
    _s("spin", "total", ("total", "up", "down", "polarisation"), "spin channel of the STM map"),
    _p("ft_size", "px", C.FT_IMAGE_SIZE, _TS, 8, 4096, kind="int", flag="--size", help="FT image side"),
    _p("ft_tiling", "", 3, _NUMERIC, 1, 20, kind="int", flag="--tiling", help="cells tiled before the FT"),
    _p("ft_window", "", C.FT_WINDOW_FRACTION, _TS, 0.0, 10.0, low_open=True, flag="--window-fraction",
       help="FT window half-width in reciprocal lattice units"),
    _s("apodisation", "none", ("none", "hann", "blackman"), "apodisation window of the FT"),
    _p("remove_q0", "", True, _NUMERIC, kind="bool", help="remove the q = 0 peak of the FT"),
    _p("log_scale", "", False, _NUMERIC, kind="bool", help="store log10 FT magnitudes"),
    _s("length_unit", "auto", ("auto", "nm", "angstrom", "bond", "lattice"), "length unit of imported LDOS files"),
    # ---------------------------------------------------------------- datasets
    _p("workers", "", None, "all cores", 1, 1024, kind="int", optional=True, help="Dask worker processes"),
    _p("commit_interval_s", "s", 30.0, _NUMERIC, 0.0, 1.0e6, low_open=True,
       help="merge finished samples into the store this often"),
    _p("limit_tasks", "", None, "no limit", 1, None, kind="int", optional=True,
       help="stop after this many tasks (timing runs)"),
    # ---------------------------------------------------------------- learning
    _s("model", "cnn", ("mlp", "cnn", "resnet18"), "network architecture"),
    _s("split", "group", ("random", "group", "interpolate", "extrapolate", "filling", "draw", "draw_group"),
       "train/val/test split"),
    _p("epochs", "", 60, _NUMERIC, 1, 100_000, kind="int", help="maximum training epochs"),
    _p("batch_size", "", 16, _NUMERIC, 1, 65_536, kind="int", help="training batch size"),
    _p("lr", "", 2e-3, "AdamW default scale (Loshchilov & Hutter, ICLR 2019)", 0.0, 10.0, low_open=True,
       help="AdamW learning rate"),
    _p("weight_decay", "", 1e-4, _NUMERIC, 0.0, 10.0, help="AdamW weight decay"),
    _p("patience", "", 15, _NUMERIC, 1, 100_000, kind="int",
       help="early-stopping patience (epochs without a better validation MAE)"),
    _p("min_epochs", "", 20, _NUMERIC, 0, 100_000, kind="int", help="epochs before early stopping may act"),
    _s("augment", "clean", ("clean", "mild", "symb", "noisy"), "augmentation preset"),
    _s("augment_space", "ft", ("ft", "real"), "augment the FT image or the real-space STM map"),
    _p("symmetry", "", False, _MODEL, kind="bool", help="also apply random 60 deg rotations and mirrors"),
    _p("input_size", "px", None, "the image size", 8, 2048, kind="int", optional=True,
       help="model input side after down-sampling"),
    _p("val_fraction", "", 0.15, _NUMERIC, 0.0, 1.0, low_open=True, high_open=True, help="validation fraction"),
    _p("test_fraction", "", 0.15, _NUMERIC, 0.0, 1.0, low_open=True, high_open=True, help="test fraction"),
    _p("max_minutes", "min", None, "no budget", 0.0, 1.0e6, low_open=True, optional=True,
       help="training wall-time budget (the learning-rate schedule is fitted to it)"),
    _p("mc_samples", "", 32, "MC dropout (Gal & Ghahramani, ICML 2016)", 1, 100_000, kind="int",
       help="MC-dropout passes"),
    _s("device", "cpu", ("cpu", "cuda", "auto"), "torch device"),
    _s("loss", "mse", ("mse", "l1", "huber"), "training loss on standardised targets"),
    _s("standardise", "global", ("global", "pixel"), "image standardisation"),
    _s("norm", None, ("group", "batch"), "cnn / resnet18 normalisation layers", optional=True),
    _p("channels", "", None, "single channel", kind="str", optional=True,
       help="stack the images at every value of this parameter as input channels"),
    _p("kernel", "", True, _MODEL, kind="bool", help="blend the network with a pixel kernel ridge"),
    _p("threads", "", None, "torch default", 1, 1024, kind="int", optional=True, help="torch CPU threads"),
    _s("part", "test", ("test", "val", "train"), "part of the split to evaluate"),
    _s("corrupt", None, ("mild", "symb", "noisy"), "corrupt images with this augmentation preset",
       optional=True),
    _s("flow", "nsf", ("nsf", "maf"), "normalizing flow of the posterior: neural spline (nsf) or MAF"),
    _p("point", "", True, _MODEL, kind="bool", help="also train the point baseline on the posterior's split"),
    _p("point_max_minutes", "min", None, "no budget", 0.0, 1.0e6, low_open=True, optional=True,
       help="time budget of that point baseline"),
    _p("balance", "", 0.0, "plain NPE; 100 in Delaunoy et al., NeurIPS 2022 (arXiv:2208.13624)", 0.0, 1.0e4,
       high_open=True, help="balanced-NPE penalty weight for conservative posteriors (0: plain NPE)"),
    _p("embedding", "", "kernel", "posterior-mean summaries of semi-automatic ABC (Fearnhead & Prangle, J. R. "
       "Stat. Soc. B 74, 419 (2012)); measured against cnn in docs/benchmarks.md", kind="str",
       choices=("kernel", "cnn", "mlp", "resnet18"),
       help="what the posterior flows condition on: kernel (cross-fitted kernel-ridge summaries, shared) or a "
            "network embedding per flow (cnn, mlp, resnet18)"),
    _p("flow_scale", "", 1.0, "no rescaling: the flows model the prior-box coordinates in [-1, 1]; 0.5 measured "
       "against it in docs/benchmarks.md (session 14)", 0.0, 10.0, low_open=True,
       help="the posterior flows model flow_scale x the prior-box coordinates (a fixed first layer): below 1 the "
            "data fill fewer of the splines' bins"),
    _p("ensemble", "", 5, "deep ensembles of 5 (Lakshminarayanan et al., NeurIPS 2017); NPE ensembles are less "
       "over-confident (Hermans et al., TMLR 2022, arXiv:2110.06581)", 1, 64, kind="int",
       help="flows in the posterior ensemble (their equal-weight mixture is the posterior)"),
    # ---------------------------------------------------------------- explanation
    _p("max_samples", "", 24, _NUMERIC, 1, 1_000_000, kind="int", help="at most this many samples"),
    _p("n_steps", "", 32, "integrated gradients (Sundararajan et al., ICML 2017)", 1, 10_000, kind="int",
       help="integrated-gradients steps"),
    _s("crossover_method", "derivative", ("derivative", "tanh", "onset"), "headline U_c estimator"),
    _s("order_parameter", "mean_abs_moment", ("mean_abs_moment", "staggered_magnetization",
                                              "layer_staggered_magnetization", "abs_ferromagnetic_moment"),
       "order parameter of the headline U_c"),
    _s("attribution_method", "gradcam", ("gradcam", "guided_backprop", "integrated_gradients"),
       "attribution method"),
    # ---------------------------------------------------------------- measured maps
    _p("pixel_nm", "nm", None, "from the file", 0.0, 1.0e4, low_open=True, optional=True,
       help="pixel size of a plain-array map"),
    _p("bias_v", "V", None, "first sweep point", -100.0, 100.0, optional=True, help="sweep point of a .3ds grid"),
    _p("line_order", "", 1, _NUMERIC, -1, 10, kind="int", help="line-levelling polynomial degree (-1 none)"),
    _p("drift", "", True, "Lawler-Fujita drift correction (Nature 466, 347 (2010))", kind="bool",
       help="drift correction"),
    _s("direction", "forward", ("forward", "backward"), "scan direction of an .sxm file"),
]

#: Every parameter by name (legacy spellings included, marked by ``alias_of``).
REGISTRY: dict[str, Parameter] = {p.name: p for p in _ENTRIES}
assert len(REGISTRY) == len(_ENTRIES), "duplicate parameter names"


def parameter(name: str) -> Parameter:
    """The registry entry of ``name``; MoireSTMError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise MoireSTMError(f"unknown parameter {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


#: Defaults of one command where they differ from the registry's (the registry's are the point network's, ``train``).
COMMAND_DEFAULTS: dict[str, dict] = {
    # flows: sbi's NPE training learning rate (5e-4) and early stopping (20 epochs without improvement, here 25),
    # sbi.inference.NPE.train; larger batches and a longer epoch budget than the point network's
    "infer": {"epochs": 300, "batch_size": 64, "lr": 5e-4, "weight_decay": 1e-5, "patience": 25},
}


def default_of(name: str, command: str | None = None):
    """The default of ``name``; for ``command``, that command's own where it has one (:data:`COMMAND_DEFAULTS`)."""
    return COMMAND_DEFAULTS.get(command or "", {}).get(name, parameter(name).default)


def canonical(name: str) -> str:
    """The canonical spelling of ``name`` (``kgrid`` -> ``scf_kgrid``)."""
    p = parameter(name)
    return p.alias_of or p.name


def validate(name: str, value, where: str = ""):
    """``value`` validated and coerced by the registry entry of ``name``."""
    return parameter(name).validate(value, where)


#: Sweep TOML tables whose keys drop a prefix of the registry name (``[ft] size`` is ``ft_size``).
TABLE_PREFIX = {"ft": "ft_", "stm": "stm_"}


def table_parameter(table: str, key: str) -> Parameter:
    """The registry entry of key ``key`` of sweep TOML table ``[table]``."""
    for name in (key, TABLE_PREFIX.get(table, "") + key):
        if name in REGISTRY:
            return REGISTRY[name]
    raise MoireSTMError(f"[{table}] {key}: unknown parameter; known: {', '.join(sorted(REGISTRY))}")


def validate_sweep(values: dict, tables: dict | None = None, where: str = "sweep") -> None:
    """Validate every value of a sweep (name -> list of values) and its option tables by the registry.

    ``"magic"`` distances, unregistered names and unregistered table keys are left to the sweep and
    the stages that take them.
    """
    for name, vals in values.items():
        if name not in REGISTRY:
            continue
        for value in vals if isinstance(vals, (list, tuple)) else [vals]:
            if not (name == "distance_nm" and value == "magic"):
                REGISTRY[name].validate(value, f"{where} {name}")
    for table, options in (tables or {}).items():
        for key, value in options.items():
            names = [n for n in (key, TABLE_PREFIX.get(table, "") + key) if n in REGISTRY]
            if names:  # other keys are checked by the stage that takes them
                REGISTRY[names[0]].validate(value, f"{where} [{table}] {key}")


def atoms_for_index(index: int) -> int:
    """Atoms in the commensurate (i, i+1) TBG cell: 4 (3 i^2 + 3 i + 1)."""
    return 4 * (3 * int(index) ** 2 + 3 * int(index) + 1)
