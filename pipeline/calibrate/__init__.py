"""Thresholds and what they guarantee: conformal calibration, flag rules, segments, batch health, comparison."""
