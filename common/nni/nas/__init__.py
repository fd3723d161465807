"""NNI 3.0's ``nni.nas``."""
