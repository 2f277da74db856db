"""The input-dependent baseline c(x) of NVIL and the REBAR family
(docs/math.md, section "Score-function gradients and their baselines").

    c(x) = tanh((x - mean_x) W1 + c1) W2 + c2         (hidden width 100, output 1)

Parameters (in an estimator's aux dict): ``baseline.W1`` (D, 100), ``baseline.c1``,
``baseline.W2`` (100, 1), ``baseline.c2`` (1,). For task sp the input is the top
half, like q's. Trained on the batch mean of a squared learning signal.
"""
import numpy as np

from ..kernels.dispatch import K

N_BASELINE_HIDDEN = 100


def init_baseline(model, rng, dtype, prefix="baseline"):
    """Fan-in scaled Gaussian weights (variance 2 / fan_in), zero biases."""
    D, H = model.n_cond, N_BASELINE_HIDDEN
    return {
        f"{prefix}.W1": (rng.standard_normal((D, H)) * np.sqrt(2.0 / D)).astype(dtype),
        f"{prefix}.c1": np.zeros(H, dtype),
        f"{prefix}.W2": (rng.standard_normal((H, 1)) * np.sqrt(2.0 / H)).astype(dtype),
        f"{prefix}.c2": np.zeros(1, dtype),
    }


def baseline_forward(aux, h0, prefix="baseline"):
    """c = tanh(h0 W1 + c1) W2 + c2 for h0 = model.q_input(x). Returns (c (B,), hidden (B, 100))."""
    hidden = K.tanh_forward(K.dense_forward(h0, aux[prefix + ".W1"], aux[prefix + ".c1"]))
    return K.dense_forward_single(hidden, aux[prefix + ".W2"], aux[prefix + ".c2"]), hidden


def baseline_backward(aux, aux_grads, h0, hidden, dc, prefix="baseline"):
    """Accumulate dL/d(baseline params) given dL/dc (B,):

    dL/dW2 += hidden^T dc;  dL/dc2 += sum dc;  dL/d(pre) = (dc W2^T) (1 - hidden^2);
    dL/dW1 += h0^T dL/d(pre);  dL/dc1 += sum dL/d(pre).
    """
    dhidden = K.dense_backward_single(hidden, aux[prefix + ".W2"], dc, aux_grads[prefix + ".W2"],
                                      aux_grads[prefix + ".c2"])
    K.dense_backward(h0, aux[prefix + ".W1"], K.tanh_backward(hidden, dhidden),
                     aux_grads[prefix + ".W1"], aux_grads[prefix + ".c1"], False)


def squared_signal_loss(signal):
    """Baseline loss: mean_n signal_n^2, and its derivative 2 signal_n / B with respect to each
    signal_n. The loss comes as a function of no arguments: it is only logged (Estimate.stat)."""
    B = signal.shape[0]
    return (lambda: float(np.mean(signal.astype(np.float64) ** 2))), (2.0 / B) * signal
