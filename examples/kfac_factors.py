"""KFAC input factors of a small CNN, streamed, checked against their definition.

KFAC approximates each conv layer's curvature by A ⊗ G. The input factor A is the
second moment of the layer's unfolded input: A = Σ_n Σ_l u uᵀ over samples n and output
positions l ("expand"), or Σ_n ū ūᵀ of the per-sample means ("reduce"), with a constant-1
coordinate appended when the layer has a bias. The usual code unfolds the whole input
and multiplies; nfold.kfac_input_factors runs the model once with forward hooks and
builds every A from cache-sized slabs (or, for "reduce", without unfolding at all).

Run: python examples/kfac_factors.py
"""

import torch
from torch import nn

import nfold

torch.manual_seed(0)
d = torch.float64

model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2),
    nn.ReLU(),
    nn.Conv2d(32, 32, 3, padding="same", padding_mode="reflect", bias=False),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(32, 10),
).to(d)
x = torch.randn(16, 3, 32, 32, dtype=d)

# The layer inputs, recorded separately, for the definition below.
inputs = {}
convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
handles = [
    m.register_forward_hook(lambda m, a, o, name=name: inputs.__setitem__(name, a[0]))
    for name, m in convs.items()
]
with torch.no_grad():
    model(x)
for h in handles:
    h.remove()


def definition(layer, x, reduction):
    """unfold the whole input, then sums of outer products (per group, bias as a 1)."""
    u = nfold.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride,
                     layer.padding_mode)  # fmt: skip
    b, rows, positions = u.shape
    g = layer.groups
    u = u.view(b, g, rows // g, positions)
    if layer.bias is not None:
        u = torch.cat([u, torch.ones(b, g, 1, positions, dtype=u.dtype)], dim=2)
    if reduction == "expand":
        a = torch.einsum("bgil,bgjl->gij", u, u)
    else:
        a = torch.einsum("bgi,bgj->gij", u.mean(-1), u.mean(-1))
    return a if g > 1 else a[0]


print(f"{'layer':6} {'reduction':9} {'factor shape':16} {'unfolded input':>15} {'rel. error':>10}")
worst = 0.0
for reduction in ("expand", "reduce"):
    factors = nfold.kfac_input_factors(model, x, reduction=reduction)
    for name, a in factors.items():
        ref = definition(convs[name], inputs[name], reduction)
        err = ((a - ref).abs().max() / ref.abs().max()).item()
        worst = max(worst, err)
        unfolded = nfold.unfold(inputs[name], 3, padding=1, stride=convs[name].stride)
        size = f"{unfolded.numel() * 8 / 2**20:.1f} MiB"
        print(f"{name:6} {reduction:9} {str(tuple(a.shape)):16} {size:>15} {err:10.1e}")

# float64: the streamed factors equal the definition to round-off
assert worst < 1e-12, worst
print(f"\nall factors equal the unfold + einsum definition (worst relative error {worst:.1e})")

# A KFAC step then inverts the damped factors, e.g. for the first layer:
a = nfold.kfac_input_factors(model, x)["0"] / (x.shape[0] * 32 * 32)  # mean over positions
inverse = torch.linalg.inv(a + 1e-3 * torch.eye(a.shape[0], dtype=d))
print(f"layer 0: A is {tuple(a.shape)}, symmetric: {torch.equal(a, a.mT)}, "
      f"damped inverse computed ({tuple(inverse.shape)})")  # fmt: skip
