"""Benchmarks comparing integrad with captum's Integrated Gradients.

Run ``python -m benchmarks.run`` from the repository root; see
``benchmarks/README.md`` for the options and for what each number means.
"""
