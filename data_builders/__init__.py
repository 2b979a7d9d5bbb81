"""TFDS builders of ECGInstruct and ECGBench (`tfds build data_builders/<name>` or `pulse-jax build-data`)."""
