"""Monitoring: feature drift and calibration (Evidently), each audience's realized lift measured
from its holdout and explore rows, the champion's online verdict (keep, flag, roll back) and the
night's report that gathers every step's record."""
