"""Pure functions from (cluster state, this node, its endpoints) to desired dataplane state.

Nothing here does I/O or needs root: `apply` writes what these functions return.
"""
