"""Self-consistent spin-collinear Hubbard + long-range Coulomb mean field with Pulay (DIIS) mixing.

Model (energies in eV, per moiré cell)::

    H = H0 + U sum_i (n_i^up - 1/2)(n_i^dn - 1/2) + 1/2 sum_{i != j} V_ij (n_i - 1)(n_j - 1)   [+ Fock]
    H_sigma^MF = H0 + diag(U (n_{-sigma} - 1/2) + V_H),   V_H,i = sum_j V_ij (n_j - 1) - C qbar

For the bare ("ewald") kernel the G = 0 term of a doped cell is fixed by a compensating uniform
background: the mean potential C qbar of the uniform doping qbar = <n - 1> is removed (C = mean row
sum of V), with -C N qbar^2 / 2 in the energy. At fixed filling this is a constant shift; at fixed mu it
makes the problem well posed (without it the neutralising-background convention would give a negative
compressibility). The gated kernel keeps its physical geometric capacitance 2 pi D / A.

The free energy is F = sum_k w_k sum_n f eps - T S - sum_{i sigma} n_{i sigma} v_{i sigma} + E_int[n], i.e. the
band energy minus the double counting, equal at self-consistency to
sum f eps - T S - U sum_i (n_up n_dn - 1/4) - 1/2 sum_i (n_i + 1) V_H,i. States at equal filling are
compared by F, states at equal mu by F - mu N.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.optimize import brentq
from scipy.special import expit

from ..constants import (
    BOLTZMANN_EV_PER_K,
    SCF_DENSITY_TOL,
    SCF_DIIS_HISTORY,
    SCF_ENERGY_TOL_EV,
    SCF_MAX_ITERATIONS,
    SCF_MIN_MIXING,
    SCF_MIXING,
    SCF_STALL_STEPS,
    SCF_START_MOMENT,
    TEMPERATURE_K,
)
from ..errors import MoireSTMError, finite_number, positive_number
from ..hamiltonian.kgrid import monkhorst_pack
from .interaction import Interaction, coulomb_matrix, fock_pairs
from .solution import MeanFieldSolution, fock_matrix

STARTS = ("pm", "fm", "afm", "layer_afm", "random")
#: Occupations below this are treated as empty when accumulating densities.
_OCC_FLOOR = 1e-15


# ============================================================================ set-up (U independent)
@dataclass
class Setup:
    """Everything of a mean-field problem that does not depend on U or the densities (reusable in sweeps).

    Attributes
    ----------
    tb : tight-binding model; kpoints, kweights : k grid; h0 : list of dense H0(k) (real at Gamma).
    coulomb_ev : (N, N) long-range matrix or None; interaction : the long-range parameters used.
    fock : None or (i, j, shifts, v_ev, R_nm) pair data.
    """

    tb: object
    kgrid: int
    kpoints: np.ndarray
    kweights: np.ndarray
    h0: list
    coulomb_ev: np.ndarray | None
    interaction: Interaction
    fock: tuple | None
    fock_reference: np.ndarray | None = None
    background_ev: float = 0.0

    @property
    def n_sites(self) -> int:
        return self.tb.n_sites

    def compatible(self, tb, interaction: Interaction, kgrid: int) -> bool:
        a, b = self.interaction, interaction
        same_lr = (a.coulomb, a.dielectric, a.gate_distance_nm, a.short_distance_nm, a.fock, a.fock_cutoff_nm) == \
                  (b.coulomb, b.dielectric, b.gate_distance_nm, b.short_distance_nm, b.fock, b.fock_cutoff_nm)
        return self.tb is tb and self.kgrid == kgrid and same_lr


def _check_kgrid(kgrid) -> int:
    if isinstance(kgrid, bool) or not isinstance(kgrid, (int, np.integer, float)) or int(kgrid) != kgrid \
            or int(kgrid) < 1:
        raise MoireSTMError(f"k-grid size must be a positive integer, got {kgrid!r}")
    return int(kgrid)


def prepare(tb, interaction: Interaction, kgrid: int = 1) -> Setup:
    """Build the U-independent parts: k grid, dense H0(k), Coulomb matrix and Fock pair list."""
    if not isinstance(interaction, Interaction):
        raise MoireSTMError(f"interaction must be a moirestm.meanfield.Interaction, got {type(interaction).__name__}")
    kgrid = _check_kgrid(kgrid)
    k, w = monkhorst_pack(tb.structure.reciprocal_nm, kgrid)
    h0 = [tb.hamiltonian(kk, dense=True) for kk in k]
    coulomb = coulomb_matrix(tb.structure, interaction) if interaction.long_range else None
    fock = fock_pairs(tb.structure, interaction) if interaction.fock and interaction.long_range else None
    # compensating background (bare Coulomb only): the mean potential of a uniform doping, removed
    background = float(coulomb.sum(axis=1).mean()) if interaction.coulomb == "ewald" else 0.0
    setup = Setup(tb, kgrid, k, w, h0, coulomb, interaction, fock, background_ev=background)
    if fock is not None:
        setup.fock_reference = _reference_pair_density(setup)
    return setup


# ============================================================================ occupations and mu
def fermi(energies_ev: np.ndarray, mu_ev: float, kt_ev: float) -> np.ndarray:
    """Fermi-Dirac occupation 1/(exp((E - mu)/kT) + 1), overflow-free."""
    return expit(-(energies_ev - mu_ev) / kt_ev)


def _entropy(energies_ev, mu_ev, kt_ev):
    """-[f ln f + (1-f) ln(1-f)] per level, overflow-free."""
    x = np.abs((energies_ev - mu_ev) / kt_ev)
    return np.log1p(np.exp(-x)) + x * expit(-x)


def solve_mu(energies_ev: np.ndarray, weights: np.ndarray, electrons: float, kt_ev: float) -> float:
    """Chemical potential giving ``electrons`` per cell; energies (..., m, N) with k weights (m,)."""
    e = np.asarray(energies_ev)
    w = np.broadcast_to(weights[:, None], e.shape[-2:])

    def excess(mu):
        return float(np.sum(fermi(e, mu, kt_ev) * w)) - electrons

    lo, hi = e.min() - 60.0 * kt_ev - 1.0, e.max() + 60.0 * kt_ev + 1.0
    mu = brentq(excess, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    # In a gap much wider than kT the count is flat and any mu inside it solves the equation;
    # take mid-gap (the T -> 0 limit) when that keeps the electron count.
    below, above = e[e <= mu], e[e > mu]
    if below.size and above.size:
        mid = 0.5 * (below.max() + above.min())
        if abs(excess(mid)) <= 1e-11 * max(electrons, 1.0):
            mu = mid
    return float(mu)


# ============================================================================ the iteration map
def _diagonalise(setup: Setup, v_up, v_dn, fock_up=None, fock_dn=None):
    """Eigenvalues (2, m, N) and eigenvectors [spin][k] of the mean-field Hamiltonians."""
    n = setup.n_sites
    evals = np.empty((2, len(setup.kpoints), n))
    evecs = [[], []]
    for s, (v, hf) in enumerate(((v_up, fock_up), (v_dn, fock_dn))):
        for ik, (k, h0) in enumerate(zip(setup.kpoints, setup.h0)):
            if hf is None:
                h = h0.copy()
            else:
                i, j, _, _, r_nm = setup.fock
                h = h0 + fock_matrix(i, j, r_nm, hf, k, n)
            h.flat[:: n + 1] += v
            e, vec = sla.eigh(h, driver="evd", overwrite_a=True, check_finite=False)
            evals[s, ik] = e
            evecs[s].append(vec)
    return evals, evecs


def _densities(evecs, occ, weights):
    """Site occupations (2, N) from eigenvectors and occupations (2, m, N)."""
    n = evecs[0][0].shape[0]
    out = np.zeros((2, n))
    for s in range(2):
        for ik, vec in enumerate(evecs[s]):
            f = occ[s, ik] * weights[ik]
            sel = f > _OCC_FLOOR
            sub = vec[:, sel]
            if np.iscomplexobj(sub):
                out[s] += (sub.real**2 + sub.imag**2) @ f[sel]
            else:
                out[s] += (sub * sub) @ f[sel]
    return out


def _pair_densities(setup: Setup, evecs, occ):
    """Real-space density matrix P_s(i, j, R) = <c+_{i,0} c_{j,R}> on the Fock pairs, (2, P)."""
    i, j, _, _, r_nm = setup.fock
    out = np.zeros((2, len(i)))
    for s in range(2):
        for ik, (k, vec) in enumerate(zip(setup.kpoints, evecs[s])):
            f = occ[s, ik] * setup.kweights[ik]
            sel = f > _OCC_FLOOR
            sub = vec[:, sel]
            d = (sub * f[sel]) @ sub.conj().T  # d[a, b] = sum_n f psi_n(a) psi_n(b)^*
            vals = d[j, i]                      # = sum_n f psi_n(i)^* psi_n(j)
            if np.any(k):
                vals = vals * np.exp(1j * (r_nm @ k))
            out[s] += np.real(vals)
    return out


def _reference_pair_density(setup: Setup) -> np.ndarray:
    """Pair density per spin of the non-interacting neutral state (subtracted in the Fock term)."""
    n = setup.n_sites
    zero = np.zeros(n)
    evals, evecs = _diagonalise(setup, zero, zero)
    kt = BOLTZMANN_EV_PER_K * TEMPERATURE_K
    mu = solve_mu(evals, setup.kweights, float(n), kt)
    occ = fermi(evals, mu, kt)
    return _pair_densities(setup, evecs, occ).mean(axis=0)


@dataclass
class _State:
    """One evaluation of the SCF map at input densities."""

    n_out: np.ndarray      # (2, N)
    p_out: np.ndarray | None
    mu: float
    free_energy: float
    evals: np.ndarray
    v: np.ndarray          # (2, N) potentials used
    h_fock: np.ndarray | None


class _Model:
    def __init__(self, setup: Setup, u_ev: float, kt_ev: float, electrons: float | None, mu_fixed: float | None):
        self.setup, self.u, self.kt = setup, float(u_ev), kt_ev
        self.electrons, self.mu_fixed = electrons, mu_fixed

    def potentials(self, n):
        """Diagonal potentials (2, N): U (n_{-s} - 1/2) + V_H."""
        v = self.u * (n[::-1] - 0.5)
        if self.setup.coulomb_ev is not None:
            q = n[0] + n[1] - 1.0
            v = v + (self.setup.coulomb_ev @ q - self.setup.background_ev * q.mean())
        return v

    def interaction_energy(self, n, p):
        e = self.u * float(np.sum((n[0] - 0.5) * (n[1] - 0.5)))
        if self.setup.coulomb_ev is not None:
            q = n[0] + n[1] - 1.0
            e += 0.5 * float(q @ (self.setup.coulomb_ev @ q)) - 0.5 * self.setup.background_ev * len(q) * q.mean() ** 2
        if p is not None:
            v_pair = self.setup.fock[3]
            e += -0.5 * float(np.sum(v_pair * (p - self.setup.fock_reference) ** 2))
        return e

    def fock_hoppings(self, p):
        if p is None:
            return None
        return -self.setup.fock[3] * (p - self.setup.fock_reference)

    def evaluate(self, n_in, p_in=None) -> _State:
        setup = self.setup
        v = self.potentials(n_in)
        hf = self.fock_hoppings(p_in)
        evals, evecs = _diagonalise(setup, v[0], v[1], None if hf is None else hf[0], None if hf is None else hf[1])
        mu = solve_mu(evals, setup.kweights, self.electrons, self.kt) if self.mu_fixed is None else self.mu_fixed
        occ = fermi(evals, mu, self.kt)
        n_out = _densities(evecs, occ, setup.kweights)
        p_out = _pair_densities(setup, evecs, occ) if setup.fock is not None else None
        del evecs
        w = setup.kweights[None, :, None]
        band = float(np.sum(w * occ * evals))
        entropy = float(np.sum(w * _entropy(evals, mu, self.kt)))
        # Tr(H0 rho_out) + E_int[rho_out] - T S  (variational; equals band - double counting at convergence)
        f = band - float(np.sum(n_out * v)) + self.interaction_energy(n_out, p_out) - self.kt * entropy
        if p_out is not None:
            f -= float(np.sum(hf * p_out))
        return _State(n_out, p_out, mu, f, evals, v, hf)


# ============================================================================ mixing
class Pulay:
    """Pulay / DIIS mixing of a vector x with residual r = F(x) - x (Pulay, CPL 73, 393 (1980)).

    Stall control: when the best residual has not halved within ``stall_steps`` updates (charge
    sloshing between near-degenerate levels at the Fermi energy, e.g. partially filled flat-band
    multiplets at Gamma), the mixing fraction is halved (down to ``min_beta``) and the history restarts
    from the latest point. Damped mixing then converges where full-step extrapolation oscillates.
    """

    def __init__(self, beta: float = SCF_MIXING, history: int = SCF_DIIS_HISTORY, linear_steps: int = 2,
                 stall_steps: int = SCF_STALL_STEPS, min_beta: float = SCF_MIN_MIXING):
        self.beta, self.history, self.linear_steps = beta, max(int(history), 1), linear_steps
        self.stall_steps, self.min_beta = int(stall_steps), min(min_beta, beta)
        self.xs, self.rs, self.steps = [], [], 0
        self.best, self.checkpoint, self.since = np.inf, np.inf, 0

    def _stalled(self, norm: float) -> bool:
        self.best = min(self.best, norm)
        self.since += 1
        if self.best <= 0.5 * self.checkpoint:
            self.checkpoint, self.since = self.best, 0
        if self.since < self.stall_steps or self.beta <= self.min_beta:
            return False
        self.beta = max(0.5 * self.beta, self.min_beta)
        self.checkpoint, self.since = self.best, 0
        return True

    def next(self, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        self.steps += 1
        self.xs.append(x.copy())
        self.rs.append(r.copy())
        norms = [float(np.linalg.norm(rr)) for rr in self.rs]
        if self._stalled(norms[-1]) or norms[-1] > 10.0 * min(norms):
            # stalled, or extrapolation went astray: restart from the latest point
            self.xs, self.rs = self.xs[-1:], self.rs[-1:]
        del self.xs[:-self.history], self.rs[:-self.history]
        m = len(self.rs)
        if self.steps <= self.linear_steps or m < 2:
            return x + self.beta * r
        rr = np.array(self.rs)
        b = rr @ rr.T
        scale = np.max(np.abs(np.diag(b))) or 1.0
        a = np.zeros((m + 1, m + 1))
        a[:m, :m] = b / scale
        a[:m, m] = a[m, :m] = 1.0
        rhs = np.zeros(m + 1)
        rhs[m] = 1.0
        coef = np.linalg.lstsq(a, rhs, rcond=1e-12)[0][:m]
        xs = np.array(self.xs)
        return coef @ xs + self.beta * (coef @ rr)


# ============================================================================ starting states
def initial_densities(structure, start, electrons: float, seed: int = 0,
                      moment: float = SCF_START_MOMENT) -> np.ndarray:
    """Starting occupations (2, N) with the requested electron count and magnetic pattern."""
    n = len(structure.positions_nm)
    if isinstance(start, MeanFieldSolution):
        if start.n_sites != n:
            raise MoireSTMError(f"start solution has {start.n_sites} sites, the model has {n}")
        dens = np.array([start.n_up, start.n_down], dtype=float)
        dens += (electrons - dens.sum()) / (2 * n)
        return np.clip(dens, 0.0, 1.0)
    if start not in STARTS:
        raise MoireSTMError(f"start must be one of {STARTS} or a MeanFieldSolution, got {start!r}")
    base = electrons / (2.0 * n)
    if start == "pm":
        pattern = np.zeros(n)
    elif start == "fm":
        pattern = np.ones(n)
    elif start == "afm":
        pattern = np.where(np.asarray(structure.sublattice) == 0, 1.0, -1.0)
    elif start == "layer_afm":
        pattern = np.where(np.asarray(structure.layer) == 0, 1.0, -1.0)
    else:
        pattern = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        pattern -= pattern.mean()
    half = 0.5 * moment * pattern
    half = np.clip(half, -min(base, 1 - base), min(base, 1 - base))
    return np.array([base + half, base - half])


# ============================================================================ driver
def solve(tb, interaction: Interaction, filling: float | None = 0.0, mu_ev: float | None = None, kgrid: int = 1,
          temperature_k: float = TEMPERATURE_K, start="afm", seed: int = 0,
          max_iterations: int = SCF_MAX_ITERATIONS, density_tol: float = SCF_DENSITY_TOL,
          energy_tol_ev: float = SCF_ENERGY_TOL_EV, mixing: float = SCF_MIXING,
          diis_history: int = SCF_DIIS_HISTORY, start_moment: float = SCF_START_MOMENT,
          setup: Setup | None = None, callback=None) -> MeanFieldSolution:
    """Self-consistent spin-collinear mean field.

    Parameters
    ----------
    tb : :class:`moirestm.hamiltonian.TightBinding` model (any periodic structure).
    interaction : U, dielectric constant, Coulomb kind, Fock flag.
    filling : electrons per moiré cell relative to neutrality (fixed filling); None with ``mu_ev`` set.
    mu_ev : fixed chemical potential in eV (then ``filling`` must be None).
    kgrid : n of the n x n Monkhorst-Pack grid (reduced by time reversal; 1 = Gamma only).
    temperature_k : Fermi-Dirac temperature in K (> 0).
    start : "pm", "fm", "afm" (sublattice), "layer_afm", "random" (seeded) or a MeanFieldSolution.
    seed : random seed of the "random" start.
    max_iterations, density_tol, energy_tol_ev : stop when max |n_out - n_in| <= density_tol and the
        free-energy change <= energy_tol_ev; otherwise the result has ``converged=False``.
    mixing, diis_history : Pulay mixing fraction and history length.
    setup : a :func:`prepare` result to reuse (U sweeps); built when None.
    callback : optional function(iteration, residual, free_energy_ev) called every iteration.

    Returns
    -------
    MeanFieldSolution (non-convergence is reported in ``converged`` and the residual record, not raised).
    """
    t_start = time.perf_counter()
    if not isinstance(interaction, Interaction):
        raise MoireSTMError(f"interaction must be a moirestm.meanfield.Interaction, got {type(interaction).__name__}")
    kgrid = _check_kgrid(kgrid)
    n = tb.n_sites
    temperature_k = positive_number("temperature_k", temperature_k)
    kt = BOLTZMANN_EV_PER_K * temperature_k
    if (filling is None) == (mu_ev is None):
        raise MoireSTMError("give exactly one of filling (electrons per cell relative to neutrality) or mu_ev")
    electrons = None
    if filling is not None:
        filling = finite_number("filling", filling)
        if not -n < filling < n:
            raise MoireSTMError(f"filling {filling} is impossible: it must lie strictly between {-n} and {n} "
                                f"electrons per cell for this {n}-site cell")
        electrons = n + filling
    else:
        mu_ev = finite_number("mu_ev", mu_ev)
    for name, value in (("density_tol", density_tol), ("energy_tol_ev", energy_tol_ev), ("mixing", mixing)):
        positive_number(name, value)
    if not 0 < mixing <= 1:
        raise MoireSTMError(f"mixing must lie in (0, 1], got {mixing}")
    if isinstance(max_iterations, bool) or int(max_iterations) < 1:
        raise MoireSTMError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    if setup is None or not setup.compatible(tb, interaction, kgrid):
        setup = prepare(tb, interaction, kgrid)

    model = _Model(setup, interaction.hubbard_u_ev, kt, electrons, mu_ev)
    start_label = "solution" if isinstance(start, MeanFieldSolution) else start
    target = electrons if electrons is not None else float(n)
    dens = initial_densities(tb.structure, start, target, seed, start_moment)
    p_in = None
    if setup.fock is not None:
        p_in = np.array([setup.fock_reference, setup.fock_reference])
    mixer = Pulay(mixing, diis_history)
    residuals, energies = [], []
    converged = False
    state = None
    for it in range(1, int(max_iterations) + 1):
        state = model.evaluate(dens, p_in)
        res = float(np.max(np.abs(state.n_out - dens)))
        if p_in is not None:
            res = max(res, float(np.max(np.abs(state.p_out - p_in))))
        de = abs(state.free_energy - energies[-1]) if energies else np.inf
        residuals.append(res)
        energies.append(state.free_energy)
        if callback is not None:
            callback(it, res, state.free_energy)
        if not np.isfinite(res) or not np.isfinite(state.free_energy):
            break
        if res <= density_tol and de <= energy_tol_ev:
            converged = True
            break
        x_in = dens.ravel() if p_in is None else np.concatenate([dens.ravel(), p_in.ravel()])
        x_out = state.n_out.ravel() if p_in is None else np.concatenate([state.n_out.ravel(), state.p_out.ravel()])
        x_new = mixer.next(x_in, x_out - x_in)
        dens = np.clip(x_new[: 2 * n].reshape(2, n), 0.0, 1.0)
        if p_in is not None:
            p_in = x_new[2 * n:].reshape(2, -1)
    # The returned densities are the outputs of the last map evaluation: they carry the exact
    # electron count (mu solved) and are consistent with the stored bands and potentials.
    n_out = state.n_out
    fock = None
    if setup.fock is not None:
        i, j, shifts, _, _ = setup.fock
        fock = {"i": i, "j": j, "shift": shifts, "up_ev": state.h_fock[0], "down_ev": state.h_fock[1]}
    struct = tb.structure
    info = struct.summary() if hasattr(struct, "summary") else {"name": getattr(struct, "name", "structure")}
    n_el = float(n_out.sum())
    params = {
        "interaction": interaction.to_dict(), "filling": filling, "fixed_mu_ev": mu_ev, "kgrid": kgrid,
        "temperature_k": temperature_k, "start": start_label, "seed": int(seed),
        "density_tol": density_tol, "energy_tol_ev": energy_tol_ev, "mixing": mixing,
        "diis_history": int(diis_history), "max_iterations": int(max_iterations), "start_moment": start_moment,
        "structure": info, "slater_koster": tb.params.to_dict(), "n_sites": n,
    }
    return MeanFieldSolution(
        n_up=n_out[0].copy(), n_down=n_out[1].copy(), mu_ev=float(state.mu), free_energy_ev=float(state.free_energy),
        grand_potential_ev=float(state.free_energy - state.mu * n_el), converged=converged, iterations=len(residuals),
        residuals=np.array(residuals), energies_ev=np.array(energies), wall_time_s=time.perf_counter() - t_start,
        params=params, kpoints=setup.kpoints, kweights=setup.kweights, bands_up=state.evals[0].copy(),
        bands_down=state.evals[1].copy(), potential_up_ev=state.v[0].copy(), potential_down_ev=state.v[1].copy(),
        positions_nm=np.asarray(struct.positions_nm), layer=np.asarray(struct.layer),
        sublattice=np.asarray(struct.sublattice), superlattice_nm=np.asarray(struct.superlattice_nm), fock=fock,
        _tb=tb,
    )


# ============================================================================ U continuation
@dataclass
class USweep:
    """Result of a U continuation.

    Attributes
    ----------
    u_ev : (nU,) U values; best : lowest-free-energy solution per U (converged ones preferred);
    passes : {"up": [...], "down": [...]} solutions of each pass (entries None when skipped).
    """

    u_ev: np.ndarray
    best: list
    passes: dict

    def table(self) -> list[dict]:
        """One row per U: order parameters, energies, iterations, which pass won."""
        rows = []
        for u, sol in zip(self.u_ev, self.best):
            row = {"hubbard_u_ev": float(u)}
            row.update(sol.summary())
            row["pass"] = sol.params.get("sweep_pass", "")
            rows.append(row)
        return rows

    @property
    def mean_iterations(self) -> float:
        its = [s.iterations for p in self.passes.values() for s in p if s is not None]
        return float(np.mean(its)) if its else float("nan")


def _unit_pattern(structure, start, seed: int) -> np.ndarray:
    """Moment pattern (N,) of a starting state, scaled to max |m_i| = 1 (zeros for "pm")."""
    if isinstance(start, MeanFieldSolution):
        m = start.n_up - start.n_down
    else:
        n = len(structure.positions_nm)
        dens = initial_densities(structure, start, float(n), seed, moment=1.0)
        m = dens[0] - dens[1]
    peak = float(np.max(np.abs(m)))
    return m / peak if peak > 0 else np.zeros_like(m)


def _kicked(previous: MeanFieldSolution, pattern: np.ndarray, threshold: float,
            moment: float = SCF_START_MOMENT) -> MeanFieldSolution:
    """Warm start from ``previous``; when its moments are below ``threshold``, re-seed the start pattern.

    A nearly symmetric warm start is a trap: Pulay (DIIS) is a root finder and converges to the
    symmetric fixed point even where it is unstable (a 0.02 seed at U = 2.5 t on the honeycomb lattice
    returns to m = 0). Re-seeding with the full start moment lets the ordered state be found.
    """
    from dataclasses import replace

    if float(np.max(np.abs(previous.n_up - previous.n_down))) >= threshold or not np.any(pattern):
        return previous
    half = 0.5 * moment * pattern
    return replace(previous, n_up=np.clip(previous.n_up + half, 0, 1), n_down=np.clip(previous.n_down - half, 0, 1))


def sweep_u(tb, interaction: Interaction, u_values_ev, directions=("up", "down"), start="afm",
            progress=None, reseed_below: float = 0.02, **solve_kwargs) -> USweep:
    """U continuation: warm-start each U from its neighbour, going up and then down; keep the lowest F.

    Parameters
    ----------
    u_values_ev : U values in eV (sorted ascending internally, duplicates removed).
    directions : passes to run, any of "up" (start state at the lowest U) and "down" (continues from the
        last "up" solution, or from ``start`` at the highest U when "up" is absent).
    start : starting state of the first solve; its moment pattern also re-seeds warm starts whose
        largest moment is below ``reseed_below`` (so an ordered state is found where it is stable;
        Pulay mixing started next to the symmetric state converges to it even where it is unstable).
    progress : optional function(done, total, solution) called after every solve.
    solve_kwargs : forwarded to :func:`solve` (filling, kgrid, temperature_k, tolerances, ...).
    """
    from dataclasses import replace

    u = np.unique(np.asarray(u_values_ev, dtype=float))
    if u.size == 0 or not np.all(np.isfinite(u)):
        raise MoireSTMError("sweep_u needs at least one finite U value")
    if np.any(u < 0):
        raise MoireSTMError(f"Hubbard U must be non-negative, got {u.min()} eV")
    bad = [d for d in directions if d not in ("up", "down")]
    if bad or not directions:
        raise MoireSTMError(f"directions must be a non-empty subset of ('up', 'down'), got {directions!r}")
    setup = solve_kwargs.pop("setup", None) or prepare(tb, interaction, solve_kwargs.get("kgrid", 1))
    pattern = _unit_pattern(tb.structure, start, solve_kwargs.get("seed", 0))
    total = len(u) * len(directions)
    done = 0
    passes = {}
    previous = start
    for direction in ("up", "down"):
        if direction not in directions:
            continue
        order = range(len(u)) if direction == "up" else range(len(u) - 1, -1, -1)
        results = [None] * len(u)
        for idx in order:
            first = previous if not isinstance(previous, MeanFieldSolution) else _kicked(previous, pattern,
                                                                                         reseed_below)
            sol = solve(tb, replace(interaction, hubbard_u_ev=float(u[idx])), start=first, setup=setup,
                        **solve_kwargs)
            sol.params["sweep_pass"] = direction
            results[idx] = sol
            previous = sol
            done += 1
            if progress is not None:
                progress(done, total, sol)
        passes[direction] = results
    fixed_mu = solve_kwargs.get("mu_ev") is not None
    best = []
    for idx in range(len(u)):
        cands = [p[idx] for p in passes.values() if p[idx] is not None]
        pool = [c for c in cands if c.converged] or cands
        key = (lambda s: s.grand_potential_ev) if fixed_mu else (lambda s: s.free_energy_ev)
        best.append(min(pool, key=key))
    return USweep(u, best, passes)
