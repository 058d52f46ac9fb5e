"""Benchmarks as library functions: the CLI (`dpscope bench ...`) and benchmarks/ scripts call these."""
