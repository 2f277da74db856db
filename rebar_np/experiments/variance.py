"""Gradient-variance comparisons between estimators (the paper's variance plots).

track_variance: follow one estimator's optimisation trajectory and, on every
step's batch, also compute every other estimator's gradient, each with its own
control-variate state (baseline, eta, temperature), trained exactly as it would
be if it were followed.

Noise: common random numbers. Every estimator draws from its own generator, all
of them seeded identically, so estimators that consume noise the same way (the
single-sample ones, one u per layer per example: nvil, the muprops, concrete,
the rebar family, relax, arm, disarm) see the same u on every step. Each
estimator's stream is still a stream of independent uniforms, independent of
the parameters it is evaluated at, so its own variance estimate is unchanged in
distribution; only the comparison between two such estimators is sharper (e.g.
relax against dynamic_rebar, disarm against arm: their difference no longer
carries two independent streams' noise). The followed estimator's stream, hence
the trajectory, does not depend on which estimators are tracked beside it.

Per estimator e and entry j we keep EMAs (decay 0.999, bias-corrected) of g_{e,j}
and g_{e,j}^2; the reported value is

    log mean_j E[(g_{e,j} - m_j)^2] = log mean_j (E[g_e^2] - 2 m_j E[g_e] + m_j^2),

with m_j the common mean: the average over the unbiased estimators of E[g_{e,j}]
(they share one expectation, so pooling them estimates it with less noise; under common
noise their errors are correlated, so pooling gains less). The K-sample estimators (vimco,
reinforce_loo) estimate the gradient of the K-sample bound instead, and are measured around
their own pooled mean.

measure_variance: freeze a model and estimate each estimator's per-entry variance
from K independent draws on one fixed batch, with a confidence interval for the
mean over entries (an interval that shrinks as 1/sqrt(K)).
"""
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .. import estimators as E
from ..training.adam import AdamConfig, adam_init, adam_update
from ..training.train import DTYPES, TrainConfig, TrainingDiverged, _check_finite, build, ema_moments, step_setting

BIASED = {"concrete"}


@dataclass
class Tracked:
    name: str
    aux: dict
    opt: dict
    rng: np.random.Generator
    options: dict
    m1: dict = field(default_factory=dict)
    m2: dict = field(default_factory=dict)


def _options(cfg, name):
    known = E.get(name).DEFAULT_OPTIONS
    return {k: v for k, v in {"temperature": cfg.temperature, "relaxation": cfg.relaxation, "samples": cfg.samples,
                              "hidden": cfg.relax_hidden}.items() if k in known}


def target(tr):
    """What an estimator's gradient is an estimate of: the ELBO's, or the K-sample bound's for K = samples."""
    return f"bound{tr.options['samples']}" if "samples" in tr.options else "elbo"


def track_variance(cfg, data, estimators, follow, log=print, report_every=0, decay=0.999, on_row=None, stop=None):
    """Train cfg's model with `follow` and report every estimator's log gradient variance.

    Returns a list of rows {"step", "train_elbo", name: log variance, ...}, one per report;
    on_row(rows), when given, is called with the rows so far after each one (a long comparison
    keeps what it has measured on disk). stop: an object whose `requested` turns true (the
    command line's rebar_np.training.train.StopFlag on Ctrl-C) to stop between two steps, returning
    the rows so far: the last row's step is then below cfg.steps.
    """
    cfg.validate()
    names = list(dict.fromkeys([follow] + list(estimators)))
    for n in names:
        E.get(n)
    dtype = DTYPES[cfg.dtype]
    train_x = np.ascontiguousarray(data["train"], dtype=dtype)
    cfg_follow = TrainConfig(**{**cfg.__dict__, "model": follow})
    model, params, _ = build(cfg_follow, train_x)
    adam_cfg = AdamConfig(cfg.learning_rate, cfg.beta1, cfg.beta2, cfg.adam_eps)
    opt = adam_init(params)
    seed_data, seed_noise = np.random.SeedSequence(cfg.seed).spawn(2)
    rng_data = np.random.default_rng(seed_data)
    tracked = []
    for n in names:
        opts = _options(cfg, n)
        aux = E.get(n).init_aux(model, cfg.seed + 1, dtype, opts)
        tracked.append(Tracked(n, aux, adam_init(aux), np.random.default_rng(seed_noise), opts,   # same stream each
                               {k: np.zeros(v.shape) for k, v in params.items()},
                               {k: np.zeros(v.shape) for k, v in params.items()}))
    N, B = train_x.shape[0], cfg.batch_size
    steps_per_epoch = -(-N // B)
    report_every = report_every or steps_per_epoch
    rows, step, elbo_sum, elbo_n = [], 0, 0.0, 0
    with step_setting(B) as cores, tqdm(total=cfg.steps, unit="step", file=sys.stderr, disable=None,
                                        mininterval=1.0, dynamic_ncols=True) as bar:
        while step < cfg.steps and not (stop is not None and stop.requested):
            order = rng_data.permutation(N)
            for start in range(0, N, B):
                if step >= cfg.steps or (stop is not None and stop.requested):
                    break
                x = train_x[order[start:start + B]]
                step += 1
                t_step = time.perf_counter()
                for t in tracked:
                    res = E.get(t.name).estimate(model, params, t.aux, x, rng=t.rng, options=t.options)
                    bad = None
                    for k, g in res.grads.items():
                        if ema_moments(g, t.m1[k], t.m2[k], decay) and bad is None:
                            bad = k
                    bad_aux = (adam_update(t.aux, res.aux_grads, t.opt, adam_cfg, cfg.aux_lr_scale)
                               if t.aux else None)
                    try:
                        _check_finite(step, res, bad, bad_aux, t.aux)
                    except TrainingDiverged as err:     # say whose gradient it was
                        whose = f"{t.name}{' (followed)' if t.name == follow else ''}"
                        raise TrainingDiverged(f"{whose}: {err}") from None
                    if t.name == follow:
                        followed = res
                adam_update(params, followed.grads, opt, adam_cfg)
                cores.record(time.perf_counter() - t_step)
                bar.update(1)
                elbo_sum += float(np.sum(followed.elbo, dtype=np.float64))
                elbo_n += followed.elbo.shape[0]
                if step % report_every == 0 or step == cfg.steps:
                    row = {"step": step, "train_elbo": elbo_sum / elbo_n, **log_variances(tracked, step, decay)}
                    rows.append(row)
                    log(f"Step {step}: train ELBO {row['train_elbo']:.2f} ({follow}), log variance "
                        + ", ".join(f"{t.name} {row[t.name]:.3f}" for t in tracked))
                    elbo_sum, elbo_n = 0.0, 0
                    if on_row is not None:
                        on_row(rows)
    return rows


def log_variances(tracked, t, decay):
    """{name: log mean_j E[(g_{e,j} - m_j)^2]} with m the pooled mean of the unbiased estimators
    of the same target (the ELBO, or the K-sample bound for the K-sample estimators)."""
    corr = 1.0 - decay ** t
    out = {}
    for tr in tracked:
        same = [u for u in tracked if target(u) == target(tr)]
        unbiased = [u for u in same if u.name not in BIASED] or same
        total, n = 0.0, 0
        for k in tr.m1:
            m = sum(u.m1[k] for u in unbiased) / (len(unbiased) * corr)
            e1, e2 = tr.m1[k] / corr, tr.m2[k] / corr
            total += float(np.sum(e2 - 2.0 * m * e1 + m * m))
            n += e1.size
        out[tr.name] = float(np.log(max(total / n, 1e-300)))
    return out


def measure_variance(model, params, auxes, x, draws, estimators, options=None, seed=0, z=1.96, stop=None):
    """Per-entry variance of each estimator from `draws` independent draws on the fixed batch x.

    Returns {name: {"log_variance", "ci": (lo, hi) of the log, "mean_variance", "stderr"}}: the
    mean over entries of the unbiased per-entry sample variance, and a z-interval for it
    from the spread of the per-draw squared deviations (delta method on the log). None once
    stop.requested turns true (checked between two draws).
    """
    out = {}
    with step_setting(x.shape[0]) as cores:     # the draws run as training steps do
        for i, name in enumerate(estimators):
            est = E.get(name)
            rng = np.random.default_rng([seed, i])
            opts = (options or {}).get(name)
            grads = []
            for _ in range(draws):
                if stop is not None and stop.requested:
                    return None
                t_draw = time.perf_counter()
                res = est.estimate(model, params, auxes[name], x, rng=rng, options=opts)
                cores.record(time.perf_counter() - t_draw)
                grads.append(np.concatenate([g.ravel() for g in res.grads.values()]).astype(np.float64))
            samples = np.stack(grads)
            mean = samples.mean(axis=0)
            dev2 = ((samples - mean) ** 2).mean(axis=1) * draws / (draws - 1)   # per draw, mean over entries
            v = float(dev2.mean())
            se = float(dev2.std(ddof=1) / np.sqrt(draws))
            out[name] = {"mean_variance": v, "stderr": se, "log_variance": float(np.log(v)),
                         "ci": (float(np.log(max(v - z * se, 1e-300))), float(np.log(v + z * se)))}
    return out
