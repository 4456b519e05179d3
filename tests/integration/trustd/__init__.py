"""Tests of the package of the same name (tests mirror the packages)."""
