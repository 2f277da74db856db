"""The kernels: every differentiable piece of an SBN as a forward/backward (and tangent) pair.

This package's namespace is the set of CPU kernels: ``rebar_np.kernels.<name>`` is what the
dispatcher ``K`` (kernels/dispatch.py) hands out for NumPy arrays, and its CUDA twin of the same
name in kernels/cuda.py for GPU arrays. Passes and estimators call ``K.<name>``; a test or a
tracer that replaces ``rebar_np.kernels.<name>`` is seen by every caller.

Readable pairs, the math in their docstrings (docs/math.md points here):

    dense.py        a = h W + c: forward, backward, tangent, the Gram-matrix tangent
    activations.py  tanh, sigma, softplus
    likelihood.py   log B(y; a) of hard and relaxed values
    noise.py        logistic noise, hard and relaxed samples, REBAR's conditional derivative,
                    the bound's 32-bit samples
    reductions.py   leave-one-out centring, sums of squares, dot products, log-mean-exp
    tables.py       products of hard samples as table sums (the bound's route, "Four Russians")

Performance internals, each module saying which readable computation it equals and which test
holds them equal:

    blocking.py     BLAS's ?gemm called directly; the step's products in halves and blocks
    fastmath.py     float32 exp, log, log1p, softplus, sigma, tanh that vectorise in jitted loops, and the
                    kernels' one-pass float32 routes on them; sums of log1p as logs of products
    jit.py          the Numba decorators

The GPU and the dispatch:

    cuda.py         the numba.cuda twin of every kernel (same names and arguments)
    dispatch.py     DeviceArray, to_device / to_host, and ``K``, the one CPU/CUDA dispatch point

Internal constants (SPLIT_MIN_MACS, TABLE_MAX_BYTES, ...) live in their modules only; change
them there.

Conventions (the same in every module, and in docs/math.md):

- arrays are 2-D ``(B, n)`` batches, C-contiguous, float32 for training and
  float64 for checks; every kernel is generic in the dtype;
- a ``*_forward`` returns its output (and whatever the backward needs is either
  that output or one of its inputs, which the caller keeps);
- the matching ``*_backward`` sits right below it, takes the upstream gradient
  ``d<out>`` (a derivative of the *loss*) and returns the gradient of its inputs;
  parameter gradients are *accumulated* (``+=``) into the arrays passed in, so
  several passes can add into one gradient dict.

Symbols: ``a`` logits, ``h`` a layer's input or a hidden activation, ``u``
uniform noise, ``z`` logistic noise, ``b`` hard sample, ``s`` relaxed sample,
``lam`` temperature.
"""
from .activations import (sigmoid_backward, sigmoid_backward_tangent, sigmoid_forward, softplus, tanh_backward,
                          tanh_backward_tangent, tanh_forward, tanh_tangent)
from .dense import (dense_backward, dense_backward_input, dense_backward_single, dense_forward, dense_forward_single,
                    dense_tangent, gram_tangent)
from .likelihood import (bernoulli_loglik_backward, bernoulli_loglik_backward_sample, bernoulli_loglik_backward_tangent,
                         bernoulli_loglik_forward, binary_product_loglik, loglik_rows, softplus_rows)
from .noise import (BITS_TO_UNIFORM, U_MAX, U_MIN, dz_cond_dlogits, hard_sample_forward, logistic_noise,
                    mean_sample_forward, relaxed_logits_backward, relaxed_logits_backward_tangent,
                    relaxed_sample_backward, relaxed_sample_forward, relaxed_sample_tangent, sample_rows,
                    threshold_samples)
from .reductions import dot, leave_one_out_center, logmeanexp_rows, per_example_dot, subtract_scaled, sum_squares
from .tables import (GROUP_BITS, GROUP_BLOCK, binary_product, binary_product_groups, binary_product_pays,
                     binary_product_table, group_codes)
