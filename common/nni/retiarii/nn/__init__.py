"""NNI 2.x's ``nni.retiarii.nn``."""
