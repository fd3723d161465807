"""NNI 2.x's ``nni.retiarii.hub``: the known search spaces (``.pytorch``)."""
