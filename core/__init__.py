"""The bottom layer of attnbench: measurement, results schema and the generic registry.

Imports torch, numpy and the standard library only; methods, tasks and runners build on it.
"""
