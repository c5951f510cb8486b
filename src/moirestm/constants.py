"""Physical constants and default model parameters, each with its literature source.

Every default used anywhere in moirestm lives here. Units: eV, nm, K, GPa.
"""

from __future__ import annotations

import math

# --- fundamental constants (CODATA 2018) -----------------------------------
#: Coulomb constant e^2/(4 pi eps0) in eV nm (CODATA 2018: 1.439964548 eV nm).
COULOMB_EV_NM = 1.439964548
#: Boltzmann constant in eV/K (CODATA 2018, exact).
BOLTZMANN_EV_PER_K = 8.617333262e-5
#: Reduced Planck constant in eV s (CODATA 2018, exact).
HBAR_EV_S = 6.582119569e-16

# --- graphene geometry -----------------------------------------------------
#: Graphene lattice constant a in nm (Castro Neto et al., RMP 81, 109 (2009)).
GRAPHENE_LATTICE_NM = 0.246
#: Carbon-carbon bond length a0 = a/sqrt(3) in nm (Moon & Koshino, PRB 85, 195458 (2012)).
CARBON_BOND_NM = GRAPHENE_LATTICE_NM / math.sqrt(3.0)
#: Interlayer distance of bilayer graphene / graphite d0 in nm (Moon & Koshino 2012).
INTERLAYER_DISTANCE_NM = 0.335

# --- Slater-Koster p_z hoppings (Moon & Koshino, PRB 85, 195458 (2012)) ------
#: Intralayer nearest-neighbour pp-pi transfer integral V_pp_pi^0 in eV.
V_PP_PI_EV = -2.7
#: Interlayer vertical pp-sigma transfer integral V_pp_sigma^0 in eV.
V_PP_SIGMA_EV = 0.48
#: Decay length delta0 = 0.184 a of both transfer integrals, in nm.
SK_DECAY_NM = 0.184 * GRAPHENE_LATTICE_NM
#: Default hopping cutoff radius in nm (hoppings beyond are below 2 meV).
HOPPING_CUTOFF_NM = 0.6

# --- pressure -> interlayer distance ---------------------------------------
#: Zero-pressure c-axis modulus K0c of graphite in GPa from a Birch-Murnaghan fit of c^3
#: (Wang, Panzik, Kiefer & Lee, Sci. Rep. 2, 520 (2012), Table 1); linear compressibility 1/(3 K0c).
GRAPHITE_C_MODULUS_GPA = 12.0
#: Pressure derivative K0' of that fit (fixed to 4 in Wang et al. 2012).
GRAPHITE_C_MODULUS_DERIVATIVE = 4.0
#: Graphite transforms above ~11 GPa (Hanfland, Beister & Syassen, PRB 39, 12598 (1989)).
GRAPHITE_MAX_PRESSURE_GPA = 11.0

# --- interactions ----------------------------------------------------------
#: Dielectric constant of the long-range Coulomb term (Tanksale & Stauber, arXiv:2602.18890).
DIELECTRIC_CONSTANT = 10.0
#: Hubbard U range studied in the reference study, in eV (Tanksale & Stauber).
HUBBARD_U_RANGE_EV = (0.0, 6.0)
#: Onsite value of the long-range kernel, regularised Ohno form
#: V(r) = e^2 / (eps sqrt(r^2 + r0^2)), r0 set so V(0) equals the bare e^2/(eps a0)
#: value at the bond length (Ohno, Theor. Chim. Acta 2, 219 (1964)).
COULOMB_SHORT_DISTANCE_NM = CARBON_BOND_NM
#: Self-consistency tolerances (issue specification): max density change and energy change (eV).
SCF_DENSITY_TOL = 1e-6
SCF_ENERGY_TOL_EV = 1e-7
#: Default temperature in K.
TEMPERATURE_K = 10.0

# --- reference study -------------------------------------------------------
#: Commensurate index of the reference study (theta = 3.48 deg, 1084 atoms).
REFERENCE_INDEX = 9
#: FT-LDOS image side in pixels (Tanksale & Stauber).
FT_IMAGE_SIZE = 256
#: FT window half-width in units of 2 pi / a (x) and 4 pi / (sqrt(3) a) (y) (Tanksale & Stauber).
FT_WINDOW_FRACTION = 1.1

# --- mean field (issue 6) --------------------------------------------------
#: Distance from the bilayer to each of the two metallic gates for the double-gate screened
#: kernel, in nm. Model default (no single literature value): representative of dual-gated,
#: hBN-encapsulated devices whose hBN spacers are a few tens of nm thick.
GATE_DISTANCE_NM = 20.0
#: Cutoff radius of the optional Fock (exchange) term of the long-range kernel, in nm (model default:
#: covers the first eight intralayer shells and the nearest interlayer pairs).
FOCK_CUTOFF_NM = 0.5
#: Mean-field (Hartree-Fock) critical U/t of the half-filled honeycomb Hubbard model for the
#: antiferromagnetic (Neel) instability, U_c/t = 2.23 (Sorella & Tosatti, Europhys. Lett. 19, 699 (1992);
#: Peres, Araujo & Bozi, PRB 70, 195122 (2004)). Equals 2 / <1/|f_k|>_BZ for nearest-neighbour hopping.
HONEYCOMB_MEANFIELD_UC_OVER_T = 2.23
#: Default maximum number of self-consistency iterations.
SCF_MAX_ITERATIONS = 300
#: Number of previous iterates kept by Pulay (DIIS) mixing (Pulay, Chem. Phys. Lett. 73, 393 (1980)).
SCF_DIIS_HISTORY = 8
#: Linear-mixing fraction of the output density in the first steps / Pulay update.
SCF_MIXING = 0.5
#: Pulay stall control: halve the mixing fraction (not below SCF_MIN_MIXING) when the best residual
#: has not halved within this many iterations (adaptive damping, cf. Kresse & Furthmueller,
#: Comput. Mater. Sci. 6, 15 (1996), Sec. 7; chosen on the i = 9 hole-doped flat-band cases).
SCF_STALL_STEPS = 12
SCF_MIN_MIXING = 0.05
#: Initial local moment |n_up - n_down| per site of the symmetry-broken starting states.
SCF_START_MOMENT = 0.5
#: Convergence ladder (issue 14). Iterations of each rung before the next one takes over; the whole
#: solve stops after SCF_MAX_TOTAL_ITERATIONS map evaluations (an explicit ``converged=False`` result).
SCF_RUNG_ITERATIONS = 150
#: A rung is abandoned as stalled when its best residual has not fallen by SCF_STALL_FACTOR over the
#: last SCF_STALL_WINDOW iterations (after at least 2 windows).
SCF_STALL_WINDOW = 20
SCF_STALL_FACTOR = 3.0
SCF_MAX_TOTAL_ITERATIONS = 1500
#: Mixed precision: float32 diagonalisation while the density residual exceeds this (float32
#: eigenvectors are accurate to ~1e-6 in the densities), float64 to finish.
SCF_SINGLE_PRECISION_RESIDUAL = 1e-3
#: Annealing rung: Fermi temperatures, in units of the target temperature, solved in turn (a smeared
#: start removes the charge sloshing between near-degenerate levels at E_F; cf. Mermin, Phys. Rev.
#: 137, A1441 (1965) for the finite-temperature functional the smeared states minimise).
#: Measured on i = 5, 3 x 3, U = 6 eV, nu = -2 (10 K): 1000 -> 300 -> 100 -> 30 -> 10 K converged in 63
#: evaluations where Pulay from the cold start, and a 300 -> 60 -> 10 K ladder, stalled at 5e-4.
SCF_ANNEAL_FACTORS = (100.0, 30.0, 10.0, 3.0, 1.0)
#: Residual to which each hotter annealing step is converged before cooling.
SCF_ANNEAL_RESIDUAL = 1e-4
#: Damped rung: linear-mixing fraction and DIIS history (Kresse & Furthmueller 1996, Sec. 7).
SCF_DAMPED_MIXING = 0.05
SCF_DAMPED_HISTORY = 20
#: Default k grids (issue 14): n x n Monkhorst-Pack grid of the self-consistency and of the
#: non-self-consistent LDOS, chosen by benchmarks/bench_kgrid.py (docs/meanfield.md): at the i = 5 magic
#: distance (20 meV) SCF 6 + LDOS 12 is within 0.7 % (image) and 1.5 % (mean LDOS at E_F) of SCF 6 +
#: LDOS 24 over nu = -2, 0, 1 and U = 0..6 eV; SCF 3 errs by up to 31 %, Gamma only by up to 76 %.
SCF_KGRID = 6
LDOS_KGRID = 12
#: States within this many broadenings of the LDOS energies are computed on the LDOS grid (Gaussian:
#: exact to 1e-12 of the weight at 8 sigma; Lorentzian: the omitted tails are a smooth background,
#: below 1 % of the LDOS at E_F in the study of docs/meanfield.md).
LDOS_WINDOW_BROADENINGS = 40.0
#: Smallest half width of that window in eV.
LDOS_MIN_WINDOW_EV = 0.25

# --- STM / LDOS (issue 6) --------------------------------------------------
#: Work function of graphene in eV (Yu et al., Nano Lett. 9, 3430 (2009): 4.57 eV).
GRAPHENE_WORK_FUNCTION_EV = 4.57
#: Tunnelling decay constant kappa = sqrt(2 m_e Phi) / hbar in nm^-1 (Tersoff & Hamann, PRB 31, 805 (1985));
#: the tunnelling current from a site a height dz further from the tip is reduced by exp(-2 kappa dz).
#: sqrt(2 m_e Phi)/hbar with m_e c^2 = 510998.95 eV and hbar c = 197.3269804 eV nm (CODATA 2018).
STM_DECAY_PER_NM = math.sqrt(2.0 * 510998.95 * GRAPHENE_WORK_FUNCTION_EV) / 197.3269804
#: Lateral width (standard deviation) in nm of the p_z-like Gaussian each site contributes to the STM
#: map. Model choice (no literature value): half the bond length, so that atoms are resolved.
STM_ORBITAL_WIDTH_NM = 0.5 * CARBON_BOND_NM
#: Default STM map resolution in pixels per nm (pixel 0.05 nm resolves the atomic lattice).
STM_PIXELS_PER_NM = 20.0
#: Default LDOS broadening eta in eV.
LDOS_BROADENING_EV = 0.01
