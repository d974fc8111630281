"""fxml: config-driven experiments for the Numerai tournament."""

__version__ = "0.1.0"
