"""What a trained (or any) model is measured with, and the checks of the gradients:

    bound.py        the k-sample importance-weighted bound, arranged for throughput (32-bit noise,
                    samples by thresholding, products of hard samples as table sums)
    final.py        the final bounds of a run folder's checkpoint (``rebar-np eval``)
    generate.py     ancestral samples and reconstructions (``rebar-np samples``)
    gradcheck.py    the finite-difference checker of every estimator's surrogate (``rebar-np gradcheck``)
    unbiased.py     the statistical test that an estimator's mean is the exact gradient
                    (``rebar-np unbiased``)

Import the modules themselves; this package imports nothing.
"""
