"""Evaluation: the evaluate stage, metrics, K estimators, calibration, uncertainty, figures and the report."""
