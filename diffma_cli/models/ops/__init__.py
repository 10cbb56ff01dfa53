"""Operators: the selective scan and its backends."""
