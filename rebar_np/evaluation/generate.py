"""Images from a trained SBN: ancestral samples of p and reconstructions through q.

Ancestral sampling of p(x, b) = p(b_{L-1}) prod_l p(b_{l-1} | b_l) p(x | b_0), top down:

    b_{L-1} ~ Bernoulli(sigma(prior logits))           (task sp: logits T_prior(x_top - mean_top))
    b_{l-1} ~ Bernoulli(sigma(T_pl(2 b_l - 1)))         l = L-1 .. 1
    mean of x = sigma(T_p0(2 b_0 - 1) + data_bias)      the image shown: pixel probabilities

Reconstruction of x: b ~ q(b | x) (hard samples, docs/math.md, section "Noise and samples"), then the mean of
p(x | b_0) as above. For task sp both show the top half of a real image above the
bottom half the model predicts (q and the prior see only the top half).

Bernoulli samples use the same logistic-noise form as training: b = 1[a + z0 > 0],
z0 = log u - log(1 - u), u ~ U(0, 1).
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.sbn import draw_noise, hard_pass, prior_logits_forward, transform_forward


def _bernoulli(a, rng):
    u = rng.random(a.shape).astype(a.dtype)
    return K.hard_sample_forward(a, K.logistic_noise(u))


def _pixel_means(model, params, b0, x_cond):
    """sigma(T_p0(2 b_0 - 1) + data_bias) for the pixels p models, as full images (sp: real top half)."""
    a, _ = transform_forward(params, "p0", 2.0 * b0 - 1.0, model.nonlinear)
    probs = K.sigmoid_forward(np.ascontiguousarray(a + model.data_bias(a.dtype)))
    if model.task != "sp":
        return probs
    return np.concatenate([x_cond[:, :model.n_input - model.n_target], probs], axis=1)


def sample_images(model, params, n, rng, x_cond=None):
    """(n, n_input) pixel probabilities of n ancestral samples of the model. Task sp needs
    x_cond (n, n_input): real images whose top halves condition the prior."""
    dtype = params[next(iter(params))].dtype
    if model.task == "sp":
        if x_cond is None or x_cond.shape[0] != n:
            raise ValueError("task sp samples need n conditioning images")
        x = np.ascontiguousarray(x_cond, dtype=dtype)
    else:
        x = np.zeros((n, model.n_input), dtype)    # only its row count is used by the prior
    logits, _ = prior_logits_forward(model, params, x, dtype)
    b = _bernoulli(np.ascontiguousarray(logits), rng)
    for l in range(model.n_layer - 1, 0, -1):
        a, _ = transform_forward(params, f"p{l}", 2.0 * b - 1.0, model.nonlinear)
        b = _bernoulli(a, rng)
    return _pixel_means(model, params, b, x)


def reconstruct_images(model, params, x, rng):
    """(B, n_input) pixel probabilities of p(x | b_0) with b ~ q(b | x)."""
    dtype = params[next(iter(params))].dtype
    x = np.ascontiguousarray(x, dtype=dtype)
    z0 = [K.logistic_noise(u) for u in draw_noise(model, x.shape[0], rng, dtype)]
    hp = hard_pass(model, params, x, z0)
    return _pixel_means(model, params, hp.b[0], x)
