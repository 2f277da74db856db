"""rebar-np: REBAR and related gradient estimators for sigmoid belief networks,
differentiated by hand in NumPy + Numba."""
__version__ = "0.1.0"
