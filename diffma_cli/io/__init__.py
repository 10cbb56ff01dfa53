"""Reading and writing files: volumes (SimpleITK), weights, atomic outputs."""
