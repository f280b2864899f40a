"""Segment discovery: a shallow policy tree whose leaves are the segments to allocate over.

The subpackage is layered, each module importing only those before it:

- :mod:`~pytyche.policy_tree._kernels`: the compiled numpy-in, numpy-out kernels (bin
  histograms, the per-visitor posterior mean); no xarray, no dask;
- :mod:`~pytyche.policy_tree.binning`: the covariates a tree may split on, binned, with
  their candidate splits;
- :mod:`~pytyche.policy_tree.search`: the search for the best tree on histograms of the
  binned covariates (exact at depth 1 and 2, exact or with a depth-2 look-ahead deeper);
- :mod:`~pytyche.policy_tree.result`: :class:`PolicyTreeResult`, the tree as JSON nodes,
  its leaves as segments and rules, text, JSON and plot output, and ``assign``;
- :mod:`~pytyche.policy_tree.fit`: :func:`fit_policy_tree`: Γ̄ from the posterior, the
  search, bootstrap stability, validation and the leaf summaries.

See ``docs/segments.md`` for the method and its cost.
"""

from .fit import fit_policy_tree
from .result import PolicyTreeResult

__all__ = ["PolicyTreeResult", "fit_policy_tree"]
