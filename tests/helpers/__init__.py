"""Helpers shared by test modules: `from helpers.<module> import ...` (pytest puts tests/ on sys.path)."""
