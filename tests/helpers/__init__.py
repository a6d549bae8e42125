"""Helpers shared by test modules (imported as ``helpers``: pytest puts tests/ on sys.path). Tests import
mmsearch and these, never benchmarks/ (tests/test_architecture.py checks it)."""
