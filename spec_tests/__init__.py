"""Bare-LM's executable specification: property-based tests run against any implementation."""
