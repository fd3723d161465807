"""NNI 3.0's ``nni.nas.hub``: the known search spaces (``.pytorch``)."""
