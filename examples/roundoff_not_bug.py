"""A float32 discrepancy against torch is round-off, not a bug: it shrinks ~1e9x in float64.

Run: python examples/roundoff_not_bug.py
"""

import torch
import torch.nn.functional as F

import nfold

torch.manual_seed(0)
x = torch.randn(4, 16, 20, 20)
w = torch.randn(32, 16, 3, 3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


for dtype in (torch.float32, torch.float64):
    xx, ww = x.to(dtype), w.to(dtype)
    err = rel(nfold.conv(xx, ww, padding=1), F.conv2d(xx, ww, padding=1))
    eps = torch.finfo(dtype).eps
    print(f"{str(dtype):14} max relative difference {err:.1e}   (machine eps {eps:.1e})")

print("Both compute the same 144-term sums in different orders; each is within ~144 * eps")
print("of the exact value. A bug (wrong tap, wrong group) would not shrink in float64.")
exact = F.conv2d(x.double(), w.double(), padding=1)
print(
    f"float32 vs exact (float64): torch {rel(F.conv2d(x, w, padding=1).double(), exact):.1e}, "
    f"nfold {rel(nfold.conv(x, w, padding=1).double(), exact):.1e}: equally close"
)
