"""Scale-out on Dask: the only package of tiltflow that imports Dask."""
