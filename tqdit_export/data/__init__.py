"""Data sets the project ships with (no downloads at run time)."""
from .digits import DIGITS_SHAPE, DigitsSplit, digits_split, from_model_range, to_model_range

__all__ = ["DIGITS_SHAPE", "DigitsSplit", "digits_split", "from_model_range", "to_model_range"]
