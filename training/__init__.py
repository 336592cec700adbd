"""CITES Vision training: fine-tuning, evaluation, calibration, export and bundle writing."""
