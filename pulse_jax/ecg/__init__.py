"""ECG signals and images, without JAX: leads, readers, synthesis, measurements and the paper-ECG renderer."""
