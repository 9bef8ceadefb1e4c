"""Tests of the CI helpers and of the noxfile."""
