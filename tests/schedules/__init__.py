"""Tests of sim.schedules: pipeline schedules as data."""
