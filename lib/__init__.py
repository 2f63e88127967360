"""gapscope's shared library: everything the batch runner and the demo need.

Heavy libraries (torch, umap, plotly) are imported inside the functions that use them so
that `python -m batch --help` and the demo start fast.
"""
