"""rebar-np: REBAR and related gradient estimators for sigmoid belief networks,
differentiated by hand in NumPy + Numba.

The map of the package, bottom up (each folder's __init__ docstring lists its modules):

    kernels/        every differentiable piece as a forward/backward (and tangent) pair
                    (dense.py, activations.py, likelihood.py, noise.py, reductions.py, tables.py),
                    apart from the performance internals (blocking.py, fastmath.py); the CUDA
                    twins (cuda.py) and the one CPU/CUDA dispatch point K (dispatch.py)
    model/          the SBN and its passes: sbn.py (parameters, transforms, ELBO), relaxed.py
                    (REBAR's relaxed ELBO), baseline.py (c(x)), control_net.py (RELAX's r(z))
    estimators/     one module per gradient estimator behind one interface (__init__.py), the
                    K-sample machinery (multisample.py) and the single-layer estimators for
                    your own f (bernoulli.py)
    evaluation/     the importance-weighted bound (bound.py), a run's final bounds (final.py),
                    samples (generate.py), the finite-difference and unbiasedness checks
                    (gradcheck.py, unbiased.py)
    training/       the loop (train.py), Adam, checkpoints, exact resume, run folders, metrics,
                    the TF reference's hparams strings
    experiments/    sweeps, comparisons, variance measurements, plots, publishing results
    data.py         the data sets (HDF5 files, checksums, binarization)

The command line (cli.py, ``rebar-np``) drives training/, evaluation/ and experiments/.
docs/math.md derives every estimator and names the function that computes each equation.
"""
__version__ = "0.1.0"
