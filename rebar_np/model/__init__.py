"""The sigmoid belief network and its passes, each with the reverse (and tangent) pass that
differentiates it by hand (docs/math.md):

    sbn.py          the SBN: parameter layout, transforms, the recognition and generative passes
                    and their backward passes, the hard ELBO f(b), the score-function gradients
    relaxed.py      REBAR's relaxed ELBO per switch layer, its reverse pass to dz, and the
                    temperature tangents
    baseline.py     the input-dependent baseline c(x) of NVIL, MuProp and REBAR
    control_net.py  RELAX's control network r(z) with its input and mixed derivatives

Everything here calls the kernels through the dispatcher ``K`` (rebar_np.kernels), so the same
passes run on NumPy arrays and on the GPU. Import the modules themselves
(``from rebar_np.model.sbn import SBN``); this package imports nothing.
"""
