"""conv = unfold -> matmul -> reshape, with stride and dilation passed to unfold (a common
mistake is to omit them), and why fold with kernel 1 is just a reshape.

Run: python examples/conv_as_matmul.py
"""

import torch
import torch.nn.functional as F

import nfold

torch.manual_seed(0)
x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
stride, dilation, padding = 2, 2, 1

ref = F.conv2d(x, w, stride=stride, dilation=dilation, padding=padding)
L = ref.shape[2:]

cols = nfold.unfold(x, 3, dilation=dilation, padding=padding, stride=stride)  # (B, C*9, L)
out = (w.flatten(1) @ cols).reshape(2, 4, *L)  # (C_out, C*9) @ (B, C*9, L)
print(
    f"unfold(stride, dilation) -> matmul -> reshape: max |diff| vs F.conv2d = "
    f"{(out - ref).abs().max():.1e}"
)

wrong = nfold.unfold(x, 3, padding=padding)  # stride and dilation forgotten
print(
    f"unfold without stride/dilation gives {wrong.shape[-1]} columns instead of "
    f"{cols.shape[-1]}: a different (denser, undilated) convolution, not round-off"
)

# The last step is 'fold' of a (B, C_out, L) matrix with kernel 1: each block is one
# element and blocks do not overlap, so fold only reshapes the columns into the grid.
y = w.flatten(1) @ cols
folded = nfold.fold(y, L, 1)
print(f"fold(kernel_size=1) == reshape: {torch.equal(folded, y.reshape(2, 4, *L))}")
print(
    f"nfold.conv does all of this, any N: max |diff| = "
    f"{(nfold.conv(x, w, stride=stride, dilation=dilation, padding=padding) - ref).abs().max():.1e}"
)
