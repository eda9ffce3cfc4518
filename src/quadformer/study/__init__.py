"""Studies: reproducible experiments that train, measure and report (diversity vs transfer)."""

from .diversity_transfer import ARCHS, CONDITIONS, CORE, Study, StudyConfig

__all__ = ["ARCHS", "CONDITIONS", "CORE", "Study", "StudyConfig"]
