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
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy.optimize import brentq
from scipy.special import expit

from ..constants import (
    BOLTZMANN_EV_PER_K,
    SCF_DENSITY_TOL,
    SCF_ANNEAL_FACTORS,
    SCF_ANNEAL_RESIDUAL,
    SCF_DAMPED_HISTORY,
    SCF_DAMPED_MIXING,
    SCF_DIIS_HISTORY,
    SCF_ENERGY_TOL_EV,
    SCF_MAX_TOTAL_ITERATIONS,
    SCF_MIN_MIXING,
    SCF_MIXING,
    SCF_RUNG_ITERATIONS,
    SCF_SINGLE_PRECISION_RESIDUAL,
    SCF_STALL_FACTOR,
    SCF_STALL_STEPS,
    SCF_STALL_WINDOW,
    SCF_START_MOMENT,
    TEMPERATURE_K,
)
from ..errors import MoireSTMError, positive_number
from ..io import Result
from ..parameters import validate
from .interaction import Interaction, coulomb_matrix, fock_pairs
from .solution import MeanFieldSolution, fock_matrix
from .symmetry import KGrid
from .symmetry import kgrid as reduced_kgrid

STARTS = ("pm", "fm", "afm", "layer_afm", "random")
#: Occupations below this are treated as empty when accumulating densities.
_OCC_FLOOR = 1e-15


# ============================================================================ set-up (U independent)
@dataclass
class Setup:
    """Everything of a mean-field problem that does not depend on U or the densities (reusable in sweeps).

    Attributes
    ----------
    tb : tight-binding model; kgrid : n of the n x n self-consistency grid.
    grids : {symmetric: (KGrid, [dense H0(k)])}, built on first use (C3-reduced and time-reversal only).
    coulomb_ev : (N, N) long-range matrix or None; interaction : the long-range parameters used.
    fock : None or (i, j, shifts, v_ev, R_nm) pair data.
    coulomb_modes : eigen-decomposition (values, vectors) of coulomb_ev for the charge preconditioner.
    """

    tb: object
    kgrid: int
    coulomb_ev: np.ndarray | None
    interaction: Interaction
    fock: tuple | None
    use_symmetry: bool = True
    fock_reference: np.ndarray | None = None
    background_ev: float = 0.0
    grids: dict = field(default_factory=dict)
    coulomb_modes: tuple | None = None

    @property
    def n_sites(self) -> int:
        return self.tb.n_sites

    def grid(self, potentials_ev=None) -> tuple[KGrid, list]:
        """The k grid (C3-reduced when the structure, the potentials and the model allow) and its H0(k)."""
        symmetric = self.use_symmetry and self.fock is None
        g = reduced_kgrid(self.tb.structure, self.kgrid, potentials_ev, use_symmetry=symmetric)
        key = g.symmetry
        if key not in self.grids:
            self.grids[key] = (g, [self.tb.hamiltonian(k, dense=True) for k in g.kpoints])
        return self.grids[key]

    @property
    def kpoints(self) -> np.ndarray:
        return self.grid(None)[0].kpoints

    @property
    def kweights(self) -> np.ndarray:
        return self.grid(None)[0].kweights

    def charge_modes(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and vectors of the long-range matrix (computed once)."""
        if self.coulomb_modes is None:
            self.coulomb_modes = np.linalg.eigh(self.coulomb_ev)
        return self.coulomb_modes

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


def prepare(tb, interaction: Interaction, kgrid: int = 1, use_symmetry: bool = True) -> Setup:
    """Build the U-independent parts: k grids, dense H0(k), Coulomb matrix and Fock pair list.

    ``use_symmetry`` allows the C3z reduction of the k grid (used only for C3-symmetric states, without Fock).
    """
    if not isinstance(interaction, Interaction):
        raise MoireSTMError(f"interaction must be a moirestm.meanfield.Interaction, got {type(interaction).__name__}")
    kgrid = _check_kgrid(kgrid)
    coulomb = coulomb_matrix(tb.structure, interaction) if interaction.long_range else None
    fock = fock_pairs(tb.structure, interaction) if interaction.fock and interaction.long_range else None
    # compensating background (bare Coulomb only): the mean potential of a uniform doping, removed
    background = float(coulomb.sum(axis=1).mean()) if interaction.coulomb == "ewald" else 0.0
    setup = Setup(tb, kgrid, coulomb, interaction, fock, bool(use_symmetry), background_ev=background)
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
def _diagonalise(setup: Setup, v_up, v_dn, fock_up=None, fock_dn=None, single: bool = False, grid=None):
    """Eigenvalues (2, m, N), eigenvectors [spin][k] and the k grid of the mean-field Hamiltonians.

    ``grid`` : a (KGrid, H0 list) pair of ``setup``; chosen from the potentials' symmetry when None.
    ``single`` diagonalises in float32 / complex64 (eigenvalues returned in float64). Equal spin
    potentials without Fock are diagonalised once.
    """
    n = setup.n_sites
    grid, h0s = grid or setup.grid(np.stack([v_up, v_dn]) if fock_up is None else None)
    degenerate = fock_up is None and np.array_equal(v_up, v_dn)
    evals = np.empty((2, len(grid.kpoints), n))
    evecs = [[], []]
    for s, (v, hf) in enumerate(((v_up, fock_up), (v_dn, fock_dn))):
        if s == 1 and degenerate:
            evals[1], evecs[1] = evals[0], evecs[0]
            break
        for ik, (k, h0) in enumerate(zip(grid.kpoints, h0s)):
            if hf is None:
                h = h0.copy()
            else:
                i, j, _, _, r_nm = setup.fock
                h = h0 + fock_matrix(i, j, r_nm, hf, k, n)
            h.flat[:: n + 1] += v
            if single:
                h = h.astype(np.complex64 if np.iscomplexobj(h) else np.float32)
            e, vec = sla.eigh(h, driver="evd", overwrite_a=True, check_finite=False)
            if single:  # back to double precision, normalised so the electron count stays exact
                vec = vec.astype(np.complex128 if np.iscomplexobj(vec) else np.float64)
                vec /= np.linalg.norm(vec, axis=0)
            evals[s, ik] = e
            evecs[s].append(vec)
    return evals, evecs, grid


def _densities(evecs, occ, grid: KGrid):
    """Site occupations (2, N) from eigenvectors and occupations (2, m, N), symmetrised over the grid's group."""
    n = evecs[0][0].shape[0]
    out = np.zeros((2, n))
    for s in range(2):
        if s == 1 and evecs[1] is evecs[0] and np.array_equal(occ[0], occ[1]):
            out[1] = out[0]
            break
        for ik, vec in enumerate(evecs[s]):
            f = occ[s, ik] * grid.kweights[ik]
            sel = f > _OCC_FLOOR
            sub = vec[:, sel]
            if np.iscomplexobj(sub):
                out[s] += (sub.real**2 + sub.imag**2) @ f[sel]
            else:
                out[s] += (sub * sub) @ f[sel]
    return grid.symmetrise(out)


def _pair_densities(setup: Setup, evecs, occ, grid: KGrid):
    """Real-space density matrix P_s(i, j, R) = <c+_{i,0} c_{j,R}> on the Fock pairs, (2, P) (no C3 reduction)."""
    i, j, _, _, r_nm = setup.fock
    out = np.zeros((2, len(i)))
    for s in range(2):
        for ik, (k, vec) in enumerate(zip(grid.kpoints, evecs[s])):
            f = occ[s, ik] * grid.kweights[ik]
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
    evals, evecs, grid = _diagonalise(setup, zero, zero, fock_up=np.zeros(len(setup.fock[0])),
                                      fock_dn=np.zeros(len(setup.fock[0])))
    kt = BOLTZMANN_EV_PER_K * TEMPERATURE_K
    mu = solve_mu(evals, grid.kweights, float(n), kt)
    occ = fermi(evals, mu, kt)
    return _pair_densities(setup, evecs, occ, grid).mean(axis=0)


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
    grid: KGrid
    single: bool           # diagonalised in float32


class _Model:
    """The SCF map at fixed U, temperature and filling (or mu) on one k grid (kept for the whole solve)."""

    def __init__(self, setup: Setup, u_ev: float, kt_ev: float, electrons: float | None, mu_fixed: float | None,
                 start_densities: np.ndarray):
        self.setup, self.u, self.kt = setup, float(u_ev), kt_ev
        self.electrons, self.mu_fixed = electrons, mu_fixed
        # C3-reduced grid only for a C3-symmetric start; the symmetrised outputs keep the symmetry
        self.grid = setup.grid(self.potentials(start_densities) if setup.fock is None else None)

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

    def evaluate(self, n_in, p_in=None, single: bool = False) -> _State:
        setup = self.setup
        v = self.potentials(n_in)
        hf = self.fock_hoppings(p_in)
        evals, evecs, grid = _diagonalise(setup, v[0], v[1], None if hf is None else hf[0],
                                          None if hf is None else hf[1], single=single, grid=self.grid)
        mu = solve_mu(evals, grid.kweights, self.electrons, self.kt) if self.mu_fixed is None else self.mu_fixed
        occ = fermi(evals, mu, self.kt)
        n_out = _densities(evecs, occ, grid)
        p_out = _pair_densities(setup, evecs, occ, grid) if setup.fock is not None else None
        del evecs
        w = grid.kweights[None, :, None]
        band = float(np.sum(w * occ * evals))
        entropy = float(np.sum(w * _entropy(evals, mu, self.kt)))
        # Tr(H0 rho_out) + E_int[rho_out] - T S  (variational; equals band - double counting at convergence)
        f = band - float(np.sum(n_out * v)) + self.interaction_energy(n_out, p_out) - self.kt * entropy
        if p_out is not None:
            f -= float(np.sum(hf * p_out))
        return _State(n_out, p_out, mu, f, evals, v, hf, grid, single)


# ============================================================================ mixing
class Pulay:
    """Pulay / DIIS mixing of a vector x with residual r = F(x) - x (Pulay, CPL 73, 393 (1980)).

    ``precondition`` maps a residual to the step direction (e.g. the charge preconditioner of the
    long-range Hartree term); DIIS coefficients are found on the raw residuals.

    Stall control: when the best residual has not halved within ``stall_steps`` updates (charge
    sloshing between near-degenerate levels at the Fermi energy, e.g. partially filled flat-band
    multiplets at Gamma), the mixing fraction is halved (down to ``min_beta``) and the history restarts
    from the latest point. Damped mixing then converges where full-step extrapolation oscillates.
    """

    def __init__(self, beta: float = SCF_MIXING, history: int = SCF_DIIS_HISTORY, linear_steps: int = 2,
                 stall_steps: int = SCF_STALL_STEPS, min_beta: float = SCF_MIN_MIXING, precondition=None):
        self.precondition = precondition or (lambda r: r)
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
            return x + self.beta * self.precondition(r)
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
        return coef @ xs + self.beta * self.precondition(coef @ rr)


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
class _Runner:
    """Iterates the SCF map under a shared iteration / time budget and keeps the record of every rung."""

    def __init__(self, model: _Model, n: int, density_tol: float, energy_tol_ev: float, budget: int,
                 deadline: float | None, callback, mixed_precision: bool):
        self.model, self.n = model, n
        self.density_tol, self.energy_tol_ev = density_tol, energy_tol_ev
        self.budget, self.deadline, self.callback = budget, deadline, callback
        self.mixed_precision = mixed_precision
        self.residuals, self.energies, self.rungs = [], [], []
        self.target_kt = model.kt
        # (residual, densities_in, pairs_in, state, provisional) of the best float64 iterate at the target T
        # (provisional: the first iterate, kept until a float64 one at the target temperature exists)
        self.best = None

    @property
    def exhausted(self) -> bool:
        late = self.deadline is not None and time.perf_counter() > self.deadline
        return len(self.residuals) >= self.budget or late

    def run(self, rung: str, dens, p_in, mixer: Pulay, iterations: int, tol: float | None = None):
        """Iterate from (dens, p_in); returns (converged, state, dens_in, p_in) of the last evaluation."""
        n, tol = self.n, self.density_tol if tol is None else tol
        start_it, converged, state, energy_prev = len(self.residuals), False, None, None
        res = np.inf
        allow_single, single = self.mixed_precision, False
        history = []  # best residual after each iteration of this rung
        for _ in range(int(iterations)):
            if self.exhausted:
                break
            if len(history) > 2 * SCF_STALL_WINDOW and history[-SCF_STALL_WINDOW - 1] <= SCF_STALL_FACTOR * history[-1]:
                if not single:
                    break  # stalled: leave it to the next rung
                allow_single, history = False, history[-1:]  # stalled in float32: go on in float64
            # float32 while far from the fixed point (after a float64 first step, which ends the solve at
            # once from an exact start); the last iterations and the convergence test in float64
            single = allow_single and np.isfinite(res) and res > SCF_SINGLE_PRECISION_RESIDUAL
            allow_single = allow_single and (single or not np.isfinite(res))
            state = self.model.evaluate(dens, p_in, single=single)
            res = float(np.max(np.abs(state.n_out - dens)))
            if p_in is not None:
                res = max(res, float(np.max(np.abs(state.p_out - p_in))))
            de = abs(state.free_energy - energy_prev) if energy_prev is not None else np.inf
            energy_prev = state.free_energy
            self.residuals.append(res)
            self.energies.append(state.free_energy)
            history.append(min(res, history[-1]) if history else res)
            if self.callback is not None:
                self.callback(len(self.residuals), res, state.free_energy)
            if not np.isfinite(res) or not np.isfinite(state.free_energy):
                break
            at_target = self.model.kt == self.target_kt
            if self.best is None or (not state.single and at_target and (res < self.best[0] or self.best[4])):
                self.best = (res, dens.copy(), None if p_in is None else p_in.copy(), state,
                             state.single or not at_target)
            if not state.single and res <= tol and (tol > self.density_tol or de <= self.energy_tol_ev):
                converged = True
                break
            x_in = dens.ravel() if p_in is None else np.concatenate([dens.ravel(), p_in.ravel()])
            x_out = state.n_out.ravel() if p_in is None else np.concatenate([state.n_out.ravel(),
                                                                              state.p_out.ravel()])
            x_new = mixer.next(x_in, x_out - x_in)
            dens = np.clip(x_new[: 2 * n].reshape(2, n), 0.0, 1.0)
            if p_in is not None:
                p_in = x_new[2 * n:].reshape(2, -1)
        self.rungs.append({"rung": rung, "iterations": len(self.residuals) - start_it, "converged": converged,
                           "final_residual": float(res), "temperature_k": self.model.kt / BOLTZMANN_EV_PER_K})
        return converged, state, dens, p_in


def _charge_preconditioner(setup: Setup, model: _Model, state: _State | None):
    """Kerker-like preconditioner of the charge residual: (1 + chi (U + V))^-1 with a local response chi.

    The charge response to the Hartree potential is -chi V (chi ~ the density of states at E_F per site),
    so long-range sloshing modes (large eigenvalues of V) have a map Jacobian far from 1; dividing their
    residual by 1 + chi (U + lambda_V) is the real-space analogue of Kerker's G^2 / (G^2 + q0^2)
    (Kerker, PRB 23, 3082 (1981)). The spin residual is left alone.
    """
    lam, q = setup.charge_modes()
    width = max(model.kt, 0.005)
    if state is None:
        chi = 0.0
    else:
        x = (state.evals - state.mu) / width
        w = state.grid.kweights[None, :, None]
        chi = float(np.sum(w * expit(x) * expit(-x)) / width) / setup.n_sites  # per site, both spins
    factor = 1.0 / (1.0 + chi * np.maximum(lam + model.u, 0.0))
    n = setup.n_sites

    def apply(r):
        r = r.copy()
        up, dn = r[:n], r[n: 2 * n]
        charge, spin = up + dn, up - dn
        charge = q @ (factor * (q.T @ charge))
        r[:n], r[n: 2 * n] = 0.5 * (charge + spin), 0.5 * (charge - spin)
        return r

    return apply


def solve(tb, interaction: Interaction, filling: float | None = 0.0, mu_ev: float | None = None, kgrid: int = 1,
          temperature_k: float = TEMPERATURE_K, start="afm", seed: int = 0,
          max_iterations: int = SCF_MAX_TOTAL_ITERATIONS, density_tol: float = SCF_DENSITY_TOL,
          energy_tol_ev: float = SCF_ENERGY_TOL_EV, mixing: float = SCF_MIXING,
          diis_history: int = SCF_DIIS_HISTORY, start_moment: float = SCF_START_MOMENT,
          setup: Setup | None = None, callback=None, ladder: bool = True, mixed_precision: bool = True,
          use_symmetry: bool = True, max_seconds: float | None = None) -> MeanFieldSolution:
    """Self-consistent spin-collinear mean field with an automatic convergence ladder.

    Parameters
    ----------
    tb : :class:`moirestm.hamiltonian.TightBinding` model (any periodic structure).
    interaction : U, dielectric constant, Coulomb kind, Fock flag.
    filling : electrons per moiré cell relative to neutrality (fixed filling); None with ``mu_ev`` set.
    mu_ev : fixed chemical potential in eV (then ``filling`` must be None).
    kgrid : n of the n x n Monkhorst-Pack self-consistency grid (1 = Gamma only); reduced by time
        reversal, and by C3z when the state keeps it (``use_symmetry``).
    temperature_k : Fermi-Dirac temperature in K (> 0).
    start : "pm", "fm", "afm" (sublattice), "layer_afm", "random" (seeded) or a MeanFieldSolution.
    seed : random seed of the "random" start.
    max_iterations : cap on map evaluations over all rungs; max_seconds : optional wall-time cap.
    density_tol, energy_tol_ev : converged when max |n_out - n_in| <= density_tol and the free-energy
        change <= energy_tol_ev (in float64); otherwise the result has ``converged=False``.
    mixing, diis_history : Pulay mixing fraction and history length of the first rung.
    ladder : when the first rung (Pulay / DIIS) stalls, try in turn the charge-preconditioned Pulay
        (long-range Coulomb only), annealing from a smeared start, strongly damped mixing with a long
        history, and the other starting states (lowest free energy kept); ``params["ladder"]`` records
        every rung that ran.
    mixed_precision : float32 diagonalisation while the residual exceeds
        ``constants.SCF_SINGLE_PRECISION_RESIDUAL``; the converged state is always a float64 fixed point.
    setup : a :func:`prepare` result to reuse (U sweeps); built when None.
    callback : optional function(iteration, residual, free_energy_ev) called every iteration.

    Returns
    -------
    MeanFieldSolution (non-convergence is reported in ``converged`` and the record, never raised).
    """
    t_start = time.perf_counter()
    if not isinstance(interaction, Interaction):
        raise MoireSTMError(f"interaction must be a moirestm.meanfield.Interaction, got {type(interaction).__name__}")
    if (filling is None) == (mu_ev is None):
        raise MoireSTMError("give exactly one of filling (electrons per cell relative to neutrality) or mu_ev")
    # the registry's names and ranges, as on the command line (one line naming the parameter)
    kgrid, temperature_k, mu_ev, seed, max_iterations, density_tol, energy_tol_ev, mixing, diis_history, \
        start_moment = (validate(name, value, "solve") for name, value in (
            ("kgrid", kgrid), ("temperature_k", temperature_k), ("mu_ev", mu_ev), ("seed", seed),
            ("max_iterations", max_iterations), ("density_tol", density_tol), ("energy_tol_ev", energy_tol_ev),
            ("mixing", mixing), ("diis_history", diis_history), ("start_moment", start_moment)))
    n = tb.n_sites
    kt = BOLTZMANN_EV_PER_K * temperature_k
    electrons = None
    if filling is not None:
        filling = validate("filling", filling, "solve")
        if not -n < filling < n:
            raise MoireSTMError(f"solve: filling {filling} is impossible: it must lie strictly between {-n} and {n} "
                                f"electrons per cell for this {n}-site cell")
        electrons = n + filling
    if max_seconds is not None:
        positive_number("max_seconds", max_seconds)
    if setup is None or not setup.compatible(tb, interaction, kgrid) or setup.use_symmetry != bool(use_symmetry):
        setup = prepare(tb, interaction, kgrid, use_symmetry=use_symmetry)

    start_label = "solution" if isinstance(start, MeanFieldSolution) else start
    target = electrons if electrons is not None else float(n)
    dens = initial_densities(tb.structure, start, target, seed, start_moment)
    model = _Model(setup, interaction.hubbard_u_ev, kt, electrons, mu_ev, dens)
    p_in = None
    if setup.fock is not None:
        p_in = np.array([setup.fock_reference, setup.fock_reference])
    deadline = None if max_seconds is None else t_start + float(max_seconds)
    runner = _Runner(model, n, density_tol, energy_tol_ev, int(max_iterations), deadline, callback,
                     bool(mixed_precision))
    rung_its = min(SCF_RUNG_ITERATIONS, int(max_iterations)) if ladder else int(max_iterations)
    converged, state, _, _ = runner.run("pulay", dens, p_in, Pulay(mixing, diis_history), rung_its)
    if not converged and ladder:
        converged, state = _ladder(runner, setup, model, tb.structure, start, target, seed, start_moment,
                                   mixing, diis_history, rung_its, kt)
    if not converged and runner.best is not None:
        state = runner.best[3]
    return _solution(tb, setup, interaction, state, runner, converged, t_start, {
        "filling": filling, "fixed_mu_ev": mu_ev, "kgrid": kgrid, "scf_kgrid": kgrid,
        "temperature_k": temperature_k, "start": start_label, "seed": int(seed),
        "density_tol": density_tol, "energy_tol_ev": energy_tol_ev, "mixing": mixing,
        "diis_history": int(diis_history), "max_iterations": int(max_iterations), "start_moment": start_moment,
        "mixed_precision": bool(mixed_precision)})


def _anneal(runner: "_Runner", model: _Model, dens, p_in, label: str, mixing, diis_history, rung_its, kt):
    """Solve at SCF_ANNEAL_FACTORS x the target temperature in turn, each from the previous output."""
    ok, state = False, None
    for factor in SCF_ANNEAL_FACTORS:
        if runner.exhausted:
            break
        model.kt = kt * factor
        last = factor == SCF_ANNEAL_FACTORS[-1]
        ok, state, dens, p_in = runner.run(f"{label} x{factor:g}", dens, p_in, Pulay(mixing, diis_history),
                                           rung_its, tol=None if last else SCF_ANNEAL_RESIDUAL)
        if state is not None and not last:
            dens = state.n_out  # cool from the smeared output (exact electron count)
        ok = ok and last
    model.kt = kt
    return ok, state


def _ladder(runner: "_Runner", setup: Setup, model: _Model, structure, start, target, seed, start_moment,
            mixing, diis_history, rung_its, kt):
    """Rungs after a stalled Pulay run, in order: anneal from the best iterate, charge-preconditioned Pulay,
    damped mixing, then the other starting states (annealed); returns (converged, state)."""
    def best():
        return runner.best[1], runner.best[2]

    ok, state = _anneal(runner, model, *best(), "anneal", mixing, diis_history, rung_its, kt)
    if ok:
        return True, state
    if setup.coulomb_ev is not None and not runner.exhausted:
        pre = _charge_preconditioner(setup, model, runner.best[3])
        ok, state, _, _ = runner.run("kerker", *best(), Pulay(mixing, diis_history, precondition=pre), rung_its)
        if ok:
            return True, state
    if not runner.exhausted:
        ok, state, _, _ = runner.run("damped", *best(), Pulay(SCF_DAMPED_MIXING, SCF_DAMPED_HISTORY,
                                     stall_steps=10 * SCF_STALL_STEPS), 2 * rung_its)
        if ok:
            return True, state
    label = start if isinstance(start, str) else "solution"
    for other in [s for s in ("afm", "layer_afm", "fm", "pm") if s != label]:
        dens = initial_densities(structure, other, target, seed, start_moment)
        p_in = None if setup.fock is None else np.array([setup.fock_reference, setup.fock_reference])
        ok, state = _anneal(runner, model, dens, p_in, f"start {other}", mixing, diis_history, rung_its, kt)
        if ok:
            return True, state
    return False, None


def _solution(tb, setup: Setup, interaction: Interaction, state: _State, runner: _Runner, converged: bool,
              t_start: float, params: dict) -> MeanFieldSolution:
    """Package the final state (outputs of its map evaluation: exact electron count, consistent bands)."""
    n_out = state.n_out
    fock = None
    if setup.fock is not None:
        i, j, shifts, _, _ = setup.fock
        fock = {"i": i, "j": j, "shift": shifts, "up_ev": state.h_fock[0], "down_ev": state.h_fock[1]}
    struct = tb.structure
    info = struct.summary() if hasattr(struct, "summary") else {"name": getattr(struct, "name", "structure")}
    n_el = float(n_out.sum())
    params = dict(params, interaction=interaction.to_dict(), structure=info, slater_koster=tb.params.to_dict(),
                  n_sites=tb.n_sites, kpoint_symmetry=state.grid.symmetry, ladder=runner.rungs)
    return MeanFieldSolution(
        n_up=n_out[0].copy(), n_down=n_out[1].copy(), mu_ev=float(state.mu), free_energy_ev=float(state.free_energy),
        grand_potential_ev=float(state.free_energy - state.mu * n_el), converged=converged,
        iterations=len(runner.residuals), residuals=np.array(runner.residuals), energies_ev=np.array(runner.energies),
        wall_time_s=time.perf_counter() - t_start, params=params, kpoints=state.grid.kpoints,
        kweights=state.grid.kweights, bands_up=state.evals[0].copy(), bands_down=state.evals[1].copy(),
        potential_up_ev=state.v[0].copy(), potential_down_ev=state.v[1].copy(),
        positions_nm=np.asarray(struct.positions_nm), layer=np.asarray(struct.layer),
        sublattice=np.asarray(struct.sublattice), superlattice_nm=np.asarray(struct.superlattice_nm), fock=fock,
        _tb=tb,
    )


# ============================================================================ U continuation
@dataclass
class USweep(Result):
    """Result of a U continuation (saved and loaded through :class:`moirestm.io.Result`).

    Attributes
    ----------
    u_ev : (nU,) U values; best : lowest-free-energy solution per U (converged ones preferred);
    passes : {"up": [...], "down": [...]} solutions of each pass (entries None when skipped).
    """

    u_ev: np.ndarray
    best: list
    passes: dict

    def _record(self) -> dict:
        """The fields; a best solution that is an entry of a pass is recorded as that pass's name (saved once)."""
        record = super()._record()
        record["best"] = [next((name for name, sols in self.passes.items() if i < len(sols) and sols[i] is sol), sol)
                          for i, sol in enumerate(self.best)]
        return record

    @classmethod
    def _from_record(cls, record: dict) -> "USweep":
        best = [record["passes"][b][i] if isinstance(b, str) else b for i, b in enumerate(record["best"])]
        return cls(record["u_ev"], best, record["passes"])

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


def extrapolated_start(previous, u_ev: float):
    """Warm start at ``u_ev`` from the last converged solutions of a U chain.

    With two solutions the spin densities are extrapolated linearly in U (clipped to [0, 1]; the
    solver restores the electron count); with one it is returned as is. Steps beyond twice the last
    U spacing are not extrapolated.
    """
    from dataclasses import replace

    previous = list(previous)
    if not previous:
        raise MoireSTMError("extrapolated_start needs at least one previous solution")
    last = previous[-1]
    if len(previous) < 2:
        return last
    before = previous[-2]
    step = last.hubbard_u_ev - before.hubbard_u_ev
    t = (float(u_ev) - last.hubbard_u_ev) / step if step else np.inf
    if not np.isfinite(t) or abs(t) > 2.0:
        return last
    return replace(last, n_up=np.clip(last.n_up + t * (last.n_up - before.n_up), 0.0, 1.0),
                   n_down=np.clip(last.n_down + t * (last.n_down - before.n_down), 0.0, 1.0))


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
        chain = [previous] if isinstance(previous, MeanFieldSolution) else []
        for idx in order:
            first = _kicked(extrapolated_start(chain[-2:], u[idx]), pattern, reseed_below) if chain else previous
            sol = solve(tb, replace(interaction, hubbard_u_ev=float(u[idx])), start=first, setup=setup,
                        **solve_kwargs)
            sol.params["sweep_pass"] = direction
            results[idx] = sol
            previous = sol
            if sol.converged:
                chain.append(sol)
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
