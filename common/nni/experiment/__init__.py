"""NNI's ``nni.experiment``."""
