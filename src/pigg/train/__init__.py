"""Building and running training from a config."""
