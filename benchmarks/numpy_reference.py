"""A straightforward NumPy implementation of one NVIL training step (2-layer or
L-layer linear SBN, Adam included), written the way one would without thinking
about speed: the yardstick that rebar-np's own step is compared with.

It is deliberately independent of rebar_np (its own forward, backward and Adam).
"""
import numpy as np


def softplus(a):
    return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


class NumpyNVIL:
    def __init__(self, mean_x, n_layer=2, n_hidden=200, lr=3e-4, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        D, H, L = mean_x.size, n_hidden, n_layer
        g = lambda i, o: (rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(dtype)
        self.mean_x = mean_x.astype(dtype)
        m = np.clip(mean_x, 0.001, 0.999)
        self.bias = np.log(m / (1 - m)).astype(dtype)
        self.p = {}
        for l in range(L):
            self.p[f"q{l}.W"], self.p[f"q{l}.c"] = g(D if l == 0 else H, H), np.zeros(H, dtype)
            self.p[f"p{l}.W"], self.p[f"p{l}.c"] = g(H, D if l == 0 else H), np.zeros(D if l == 0 else H, dtype)
        self.p["prior"] = np.zeros(H, dtype)
        self.p["bl.W1"], self.p["bl.c1"] = g(D, 100), np.zeros(100, dtype)
        self.p["bl.W2"], self.p["bl.c2"] = g(100, 1), np.zeros(1, dtype)
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t, self.lr, self.L, self.rng = 0, lr, L, np.random.default_rng(seed + 1)

    def step(self, x):
        p, L, B = self.p, self.L, x.shape[0]
        h = [x - self.mean_x]
        a, b = [], []
        for l in range(L):
            a.append(h[-1] @ p[f"q{l}.W"] + p[f"q{l}.c"])
            u = np.clip(self.rng.random(a[-1].shape, dtype=np.float32), 1e-8, 1 - 1e-7)
            b.append((a[-1] + np.log(u) - np.log(1 - u) > 0).astype(x.dtype))
            h.append(2 * b[-1] - 1)
        logq = sum((b[l] * a[l] - softplus(a[l])).sum(1) for l in range(L))
        logp = (b[-1] * p["prior"] - softplus(p["prior"])).sum(1)
        ap = [None] * L
        for l in range(L):
            ap[l] = (2 * b[l] - 1) @ p[f"p{l}.W"] + p[f"p{l}.c"]
            y = x if l == 0 else b[l - 1]
            if l == 0:
                ap[l] = ap[l] + self.bias
            logp = logp + (y * ap[l] - softplus(ap[l])).sum(1)
        f = logp - logq
        hb = np.tanh(h[0] @ p["bl.W1"] + p["bl.c1"])
        c = (hb @ p["bl.W2"] + p["bl.c2"])[:, 0]
        sig = f - c
        g = {}
        for l in range(L):
            da = -(sig / B)[:, None] * (b[l] - sigmoid(a[l]))
            g[f"q{l}.W"], g[f"q{l}.c"] = h[l].T @ da, da.sum(0)
            y = x if l == 0 else b[l - 1]
            dap = -(y - sigmoid(ap[l])) / B
            g[f"p{l}.W"], g[f"p{l}.c"] = (2 * b[l] - 1).T @ dap, dap.sum(0)
        g["prior"] = (-(b[-1] - sigmoid(p["prior"])) / B).sum(0)
        dc = (-2.0 / B * sig)[:, None]
        g["bl.W2"], g["bl.c2"] = hb.T @ dc, dc.sum(0)
        dpre = (dc @ p["bl.W2"].T) * (1 - hb ** 2)
        g["bl.W1"], g["bl.c1"] = h[0].T @ dpre, dpre.sum(0)
        self.t += 1
        lr_t = self.lr * np.sqrt(1 - 0.99999 ** self.t) / (1 - 0.9 ** self.t)
        for k in p:
            lr_k = lr_t * (10 if k.startswith("bl") else 1)
            self.m[k] = 0.9 * self.m[k] + 0.1 * g[k]
            self.v[k] = 0.99999 * self.v[k] + 0.00001 * g[k] ** 2
            p[k] -= (lr_k * self.m[k] / (np.sqrt(self.v[k]) + 1e-8)).astype(p[k].dtype)
        return f
