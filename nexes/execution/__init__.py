"""Executing GraphQL: parse and validation caches, limits, the compiled executor and its fallback."""
