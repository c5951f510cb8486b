"""Attribution of the reported quantity of a posterior run: the posterior mean of U.

The posterior mean is made differentiable in the input by fixing the flow's base noise
(``n_samples`` draws, seeded): ``E[U | x] ~ mean_i T^-1(eps_i; embed(x))``, with ``embed`` the member's
network or the run's shared kernel summaries, pooled over the members of an ensemble run with the same
noise each.  Like the run's samples, the estimate keeps the samples inside the prior box (the mixture
truncated to the box, in which each member weighs its mass inside); which samples are inside is held
fixed in the gradient, and an image with none inside falls back to the samples clamped into the box.
Integrated gradients, guided backprop and Grad-CAM (captum, through
:func:`moirestm.explain.attribution.attribution_maps`) then explain the number the run reports,
rather than a network half whose blend weight may be zero.  Needs an nflows-based sbi flow
(``nsf``/``maf``), which is what :func:`moirestm.learn.posterior.infer` builds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MoireSTMError
from .attribution import METHODS, Attribution, attribution_maps, select_samples
from .regions import regions_for_sample


class PosteriorMean(nn.Module):
    """``x -> E[theta_name | x]`` in physical units, shape ``(B, 1)``, with fixed base noise."""

    def __init__(self, run, name: str = "hubbard_u_ev", n_samples: int = 64, seed: int = 0):
        super().__init__()
        if name not in run.names:
            raise MoireSTMError(f"the posterior run does not infer {name!r} (it infers {', '.join(run.names)})")
        from ..learn.posterior import _flow

        flows = [_flow(estimator) for estimator in run.estimators]
        self.summariser = run.summariser  # None, or the kernel summaries every member conditions on
        self.embeddings = nn.ModuleList(flow._embedding_net for flow in flows)
        self.transforms = nn.ModuleList(flow._transform for flow in flows)
        self.j = run.names.index(name)
        self.scale, self.shift = float(run.theta.half_width[self.j]), float(run.theta.centre[self.j])
        self.log = bool(run.theta.log[self.j])
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", torch.randn(n_samples, len(run.names), generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.noise)
        x = x if self.summariser is None else self.summariser(x)
        sums, counts, clamped = 0.0, 0.0, 0.0
        for embedding, transform in zip(self.embeddings, self.transforms):
            ctx = embedding(x).repeat_interleave(n, dim=0)
            z, _ = transform.inverse(self.noise.repeat(len(x), 1), context=ctx)
            z = z.reshape(len(x), n, -1)
            inside = (z.abs() <= 1).all(dim=-1).detach().to(z.dtype)
            value = z[..., self.j].clamp(-1, 1) * self.scale + self.shift  # the clamp changes no in-box sample
            value = value.exp() if self.log else value
            sums, counts = sums + (value * inside).sum(dim=1), counts + inside.sum(dim=1)
            clamped = clamped + value.mean(dim=1) / len(self.transforms)
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), clamped)  # every sample outside: clamped
        return mean[:, None]


def attribute_posterior(run: Any, store: Any = None, samples: str | Sequence[str] | None = "test",
                        methods: Sequence[str] = METHODS, max_samples: int | None = 12, n_steps: int = 32,
                        name: str = "hubbard_u_ev", n_noise: int = 64, baseline: str = "blur"
                        ) -> list[Attribution]:
    """Attribution maps and peak-region shares of the posterior mean of ``name`` for selected samples.

    ``u_pred`` of each :class:`Attribution` is that posterior mean (fixed noise, ``n_noise`` draws).
    """
    from ..learn.data import batch_inputs, open_store
    from ..learn.posterior import PosteriorRun

    run = run if isinstance(run, PosteriorRun) else PosteriorRun.load(run)
    store = store if store is not None else run.store
    if store is None:
        raise MoireSTMError("the run records no store; pass the store to explain")
    st = open_store(store)
    keys = select_samples(run, st, samples, max_samples, name)
    model = PosteriorMean(run, name, n_noise).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    results = []
    for key in keys:
        raw = st.image(key)
        x = batch_inputs(run.normalizer, [raw])
        with torch.no_grad():
            pred = float(model(x)[0, 0])
        maps = attribution_maps(model, x, target=0, methods=methods, n_steps=n_steps, baseline=baseline)
        regions = regions_for_sample(st, key, shape=tuple(x.shape[-2:]))
        m = {k: v[0] for k, v in maps.items()}
        params = st.params(key)
        att = Attribution(key, params, float(params.get(name, np.nan)), pred,
                          run.normalizer.features(run.normalizer.check(raw)), m, regions)
        att.shares = {k: regions.shares(a) for k, a in m.items()}
        results.append(att)
    return results


__all__ = ["PosteriorMean", "attribute_posterior"]
