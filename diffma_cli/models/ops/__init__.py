"""Operators: the selective scan and the causal convolution, each with its backends."""
