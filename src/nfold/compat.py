"""unfoldNd-compatible names, so ``import nfold as unfoldNd`` is a working migration.

nfold's signatures extend unfoldNd's (same positional order, extra keywords at the
end), so the compatible names are the nfold functions and modules themselves.
"""

from .modules import Fold as FoldNd
from .modules import Unfold as UnfoldNd
from .modules import UnfoldTranspose as UnfoldTransposeNd
from .patches import fold as foldNd
from .patches import unfold as unfoldNd
from .patches import unfold_transpose as unfold_transposeNd

__all__ = ["FoldNd", "UnfoldNd", "UnfoldTransposeNd", "foldNd", "unfoldNd", "unfold_transposeNd"]
