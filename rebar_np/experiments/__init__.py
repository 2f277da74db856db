"""Many runs at once, and what is made of them:

    sweep.py        grids of runs from a TOML file, run in parallel and resumed, and their report
    compare.py      one run per estimator on the same data (``rebar-np compare``)
    variance.py     the variance of the gradient estimators at fixed parameters or along training
    plots.py        learning curves and pictures of samples
    publish.py      copy finished runs into results/ and regenerate its tables

Import the modules themselves; this package imports nothing.
"""
