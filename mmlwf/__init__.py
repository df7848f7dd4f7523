"""mmlwf: machine-learned force-field workflow (data, training, evaluation)."""

__version__ = "0.1.0"
