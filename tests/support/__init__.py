"""Helpers shared by test modules: wait loops, data builders, processes, the stack.

Test modules import from here (or take fixtures from tests/conftest.py); no test module
imports another (tests/test_test_layout.py checks that).
"""
