"""nfold: N-dimensional unfold / fold (im2col / col2im) and convolution as matrix
multiplication for PyTorch: exact, any number of spatial dims, any dtype."""

from .compat import FoldNd, UnfoldNd, UnfoldTransposeNd, foldNd, unfold_transposeNd, unfoldNd
from .modules import Fold, Unfold, UnfoldTranspose
from .patches import fold, sliding_window_view, unfold, unfold_transpose

__version__ = "0.1.0"

__all__ = [
    "Fold",
    "FoldNd",
    "Unfold",
    "UnfoldNd",
    "UnfoldTranspose",
    "UnfoldTransposeNd",
    "fold",
    "foldNd",
    "sliding_window_view",
    "unfold",
    "unfoldNd",
    "unfold_transpose",
    "unfold_transposeNd",
]
