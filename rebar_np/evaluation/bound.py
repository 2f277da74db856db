"""The importance-weighted bound of an SBN (docs/math.md), arranged for throughput.

iw_bound is the k-sample bound log (1/k sum_i exp f(b_i)) of rebar_np.model.sbn's model, forward
only: the same samples b and the same f(b) = log p(x, b) - log q(b | x) as the passes of
rebar_np.model.sbn (hard_pass) at the same noise, computed with the evaluation's own machinery:
32 random bits per unit (uniform_bits), samples by thresholding (kernels.threshold_samples),
per-example terms computed once per example, and the products of hard samples as sums of table
rows (kernels.binary_product, "Four Russians"). tests/test_reference.py holds it equal to the
plain passes at the same noise, with and without the table products.
"""
import numpy as np

from ..kernels.dispatch import K, is_device, to_device, to_host
from ..model.sbn import first_layer, prior_logits_forward, transform_forward, transform_forward_after_first


def uniform_bits(rng, shape):
    """Uniform noise as 32 random bits per entry (uint32 array of the given shape), taken from
    the generator's raw 64-bit stream, two entries per draw: about 3x cheaper than
    rng.random(shape) cast to float32, and the importance-weighted bound draws hundreds of
    millions of them. Entry U stands for u = (U + 1/2) 2^-32, uniform on a grid of 2^32
    points in (0, 1) (as kernels.threshold_samples reads it)."""
    n = int(np.prod(shape))
    # full-range 64-bit integers: the bit generator's own 64-bit outputs (with NumPy's default
    # PCG64, the values bit_generator.random_raw gives), drawn 1.2x faster than through it
    raw = rng.integers(0, 2 ** 64 - 1, size=(n + 1) // 2, dtype=np.uint64, endpoint=True)
    return raw.view(np.uint32)[:n].reshape(shape)



def iw_bound(model, params, x, n_samples, rng, chunk=100, stop=None):
    """k-sample importance-weighted bound log (1/k sum_i exp f(b_i)) per example, (B,) host float64.

    Forward only, and arranged for throughput (this is the 5000-sample test bound):

    - samples are drawn in chunks of at most ``chunk`` per example (rows n*k .. n*k+k-1
      of a chunk belong to example n), so memory stays bounded; a running log-sum-exp
      merges the chunks;
    - the noise is 32 random bits per unit: bits = uniform_bits(rng, (B k, H)) per layer,
      u_l = (bits + 1/2) 2^-32, the cheapest NumPy draws;
    - b_l = 1[a_l + log u - log(1 - u) > 0] is evaluated as 1[u > sigma(-a_l)]: the
      same sample at the same noise, without two logarithms per unit;
    - whatever depends on x alone is computed once per example, not once per sample:
      the logits of q(b_0 | x) (the first, widest product), sum_j softplus of them,
      and for sp the prior's logits; the data bias is folded into T_p0's output bias;
    - log B(y; a) = y.a - sum_j softplus(a_j) (kernels.loglik_rows), with one SIMD
      exponential per unit; below the first layer, that exponential also gives the sample's
      threshold sigma(-a), in one pass with the sample's table codes (kernels.sample_rows);
    - the products whose left factor is a sample, (2 b - 1) W + c, are sums of table rows
      (kernels.binary_product, the tables of the W's built once per call) where the tables
      fit the caches: on the CPU about 2x faster than the matrix products at width 200.

    With x and params on the GPU (rebar_np.kernels.dispatch) every pass runs there; the noise is
    drawn on the host, as in training. stop: an object whose `requested` turns true to cancel
    (rebar_np.training.train.StopFlag); iw_bound then returns None before its next pass.
    """
    B, nl = x.shape[0], model.nonlinear
    dtype = params[next(iter(params))].dtype
    a0, _ = transform_forward(params, "q0", model.q_input(x), nl)               # (B, H) per example
    per_example = {"q0": (a0, K.softplus_rows(a0), K.sigmoid_forward(-a0))}
    prior, _ = prior_logits_forward(model, params, x[:1] if model.task != "sp" else x, dtype)
    per_example["prior"] = (prior, K.softplus_rows(prior))
    target = model.target(x).astype(dtype)
    out_bias = "p0.c3" if nl else "p0.c"                       # p(x | b_0)'s logits: T_p0(h) + data bias
    params = {**params, out_bias: params[out_bias] + model.data_bias(dtype)}
    sample_terms = _sample_terms(model, params)
    running = np.full(B, -np.inf)
    done = 0
    while done < n_samples:
        if stop is not None and stop.requested:          # Ctrl-C waits for one pass, not all of them
            return None
        k = min(chunk, n_samples - done)
        f = _iw_chunk_elbo(model, per_example, sample_terms, target, B, k, rng)
        running = np.logaddexp(running, to_host(K.logmeanexp_rows(f)) + np.log(k))   # log sum_i exp f here
        done += k
    return running - np.log(n_samples)


def _sample_terms(model, params):
    """(logits, loglik): logits(name, b, codes) = T_name(2 b - 1) for a hard sample b with its group
    codes (kernels.group_codes), and loglik(name, b, codes, y, k) = log B(y; T_name(2 b - 1)) per
    row, y holding one row per k rows; forward only. The first dense layer of every T fed by a
    sample is a table product (kernels.binary_product, the tables built here, once per call) where
    the table fits the caches (kernels.binary_product_pays), else a matrix product; a linear T
    that is one table product is scored in the same pass (kernels.binary_product_loglik)."""
    nl = model.nonlinear
    fed_by_samples = [f"q{l}" for l in range(1, model.n_layer)] + [f"p{l}" for l in range(model.n_layer)]
    weights = {name: params[first_layer(name, nl)[0]] for name in fed_by_samples}
    tables = {name: K.binary_product_table(W) for name, W in weights.items() if K.binary_product_pays(W)}

    def logits(name, b, codes):
        c = params[first_layer(name, nl)[1]]
        if name in tables:
            a1 = K.binary_product(codes, tables[name], c)
        else:
            a1 = K.dense_forward(2.0 * b - 1.0, weights[name], c)
        return transform_forward_after_first(params, name, a1, None, nl)[0]

    def loglik(name, b, codes, y, k):
        if name in tables and not nl:
            return K.binary_product_loglik(codes, tables[name], params[first_layer(name, nl)[1]], y, k)
        return K.loglik_rows(y, logits(name, b, codes), k)
    return logits, loglik


def _iw_chunk_elbo(model, per_example, sample_terms, target, B, k, rng):
    """f(b) = log p(x, b) - log q(b | x) for k fresh samples of each example, (B, k) float64.
    The parameters are sample_terms's (where p0's output bias already holds the data bias)."""
    sample_logits, sample_loglik = sample_terms
    H, L = model.n_hidden, model.n_layer
    G = K.binary_product_groups(H)
    R = B * k
    a0, sp0, thr0 = per_example["q0"]
    samples, codes = [], []
    for l in range(L):
        u = uniform_bits(rng, (R, H))                         # u = (bits + 1/2) 2^-32
        if is_device(a0):
            u = to_device(u)
        if l == 0:
            b = K.threshold_samples(u, thr0, k)
            logq = (K.per_example_dot(b, a0, k).reshape(B, k) - sp0[:, None]).reshape(R)
            code = K.group_codes(b, G)
        else:                                                 # b, its codes and log q(b | b_{l-1})
            b, code, ll = K.sample_rows(u, sample_logits(f"q{l}", samples[-1], codes[-1]), G)
            logq += ll
        samples.append(b)
        codes.append(code)
    prior, sp_prior = per_example["prior"]
    if prior.shape[0] == 1:                                   # sbn, omni: one prior for all
        logp = K.per_example_dot(samples[-1], prior, R) - float(sp_prior[0])
    else:                                                     # sp: the prior sees x_top
        logp = (K.per_example_dot(samples[-1], prior, k).reshape(B, k) - sp_prior[:, None]).reshape(R)
    for l in range(L - 1, -1, -1):
        y, rows_per_y = (target, k) if l == 0 else (samples[l - 1], 1)
        logp += sample_loglik(f"p{l}", samples[l], codes[l], y, rows_per_y)
    return (logp - logq).reshape(B, k)
