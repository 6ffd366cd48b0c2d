"""Tests of the built-in metric plugins."""
