"""Where and how work runs: the backend chosen once per run (`backend`), the executor
that carries it here (`executor`) or on a Dask cluster (`dask`), block maps over
memory-mapped rows (`memmap`), parameters documented where defined (`params`), progress
reporting (`progress`) and the one-line user errors (`errors`)."""
