"""nfold: N-dimensional unfold / fold (im2col / col2im) and convolution as matrix
multiplication for PyTorch: exact, any number of spatial dims, any dtype."""

import warnings as _warnings

with _warnings.catch_warnings():  # numpy is optional: torch warns on import without it
    _warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch as _torch  # noqa: F401

from .check import check_model, compare
from .compat import FoldNd, UnfoldNd, UnfoldTransposeNd, foldNd, unfold_transposeNd, unfoldNd
from .conv import conv, conv_transpose
from .conv_modules import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvNd,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    ConvTransposeNd,
)
from .convert import convert
from .kfac import kfac_input_factors, patch_covariance
from .modules import Fold, Unfold, UnfoldTranspose
from .patches import fold, sliding_window_view, unfold, unfold_transpose

__version__ = "0.1.0"

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvNd",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ConvTransposeNd",
    "Fold",
    "FoldNd",
    "Unfold",
    "UnfoldNd",
    "UnfoldTranspose",
    "UnfoldTransposeNd",
    "check_model",
    "compare",
    "conv",
    "conv_transpose",
    "convert",
    "fold",
    "foldNd",
    "kfac_input_factors",
    "patch_covariance",
    "sliding_window_view",
    "unfold",
    "unfoldNd",
    "unfold_transpose",
    "unfold_transposeNd",
]
