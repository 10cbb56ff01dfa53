"""Data: SynthRAD case discovery (`synthrad`), phantoms, normalisation, slicing and its inverse, `prepare`,
and the torch datasets training reads (`dataset`). See docs/data.md.

Submodules are imported explicitly (`from diffma_cli.data.slicing import ...`); this package imports
nothing heavy so that the command line stays fast.
"""
