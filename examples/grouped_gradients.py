"""Grouped / depthwise conv and grouped transposed conv gradients equal torch's.

Run: python examples/grouped_gradients.py
"""

from functools import partial

import torch
import torch.nn.functional as F

import nfold

torch.manual_seed(0)
d = torch.float64


def grads(fn, x, w, b):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    out = fn(x, w, b)
    out.backward(torch.ones_like(out).cumsum(-1))
    return [out.detach(), x.grad, w.grad, b.grad]


def report(name, ours, ref):
    errs = [((a - r).abs().max() / r.abs().max()).item() for a, r in zip(ours, ref, strict=True)]
    print(
        f"{name:34} "
        + "  ".join(f"{k} {e:.0e}" for k, e in zip(["out", "dx", "dW", "db"], errs, strict=True))
    )


x = torch.randn(2, 6, 9, 9, dtype=d)
cases = {
    "grouped conv (groups=3)": (torch.randn(9, 2, 3, 3, dtype=d), 3, False),
    "depthwise conv (groups=6, x2)": (torch.randn(12, 1, 3, 3, dtype=d), 6, False),
    "grouped transposed conv (groups=2)": (torch.randn(6, 2, 3, 3, dtype=d), 2, True),
}
for name, (w, g, transposed) in cases.items():
    c_out = w.shape[1] * g if transposed else w.shape[0]
    b = torch.randn(c_out, dtype=d)
    if transposed:
        ours = grads(partial(nfold.conv_transpose, stride=2, groups=g), x, w, b)
        ref = grads(partial(F.conv_transpose2d, stride=2, groups=g), x, w, b)
    else:
        ours = grads(partial(nfold.conv, padding=1, groups=g), x, w, b)
        ref = grads(partial(F.conv2d, padding=1, groups=g), x, w, b)
    report(name, ours, ref)
print("Relative errors at float64 round-off: the gradients are computed with")
print("unfold/fold (each the other's backward) and one broadcast matmul over the groups.")
print("Weight layouts: conv (C_out, C_in/groups, kH, kW); transposed (C_in, C_out/groups, kH, kW).")
