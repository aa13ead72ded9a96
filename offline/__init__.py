"""Offline side of voicegender: corpus ingestion, reader-grouped splits, windowing,
augmentation and feature extraction for training and evaluation.

Run ``python -m offline --help`` for the command line.
"""
