# retia dispatcher image: slim, no torch. The dispatcher forwards opaque bytes and never
# imports torch or pytorch_lightning (tests/deploy/ checks this).
#
# Build from the repository root:
#   docker build -f docker/dispatcher.Dockerfile -t retia-dispatcher:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# Exactly what `retia dispatcher`, `retia credential` and `retia status` import beyond the standard library
# (the test compares this list against a real import of the dispatcher side):
#   pyzmq (zmq), msgpack (wire format), cloudpickle (retia.serializer), rich (status table).
RUN pip install "pyzmq>=25" "msgpack>=1.0" "cloudpickle>=3.0" "rich>=13"

# The project without its dependencies: torch, pytorch-lightning, scikit-learn, optuna,
# matplotlib and onnx are worker/user-side only (so `retia report` and `retia worker` are not
# meant to run in this image).
COPY pyproject.toml README.md /src/
COPY common /src/common
COPY client /src/client
COPY dispatcher /src/dispatcher
COPY worker /src/worker
RUN pip install --no-deps /src \
 && rm -rf /src \
 && python -c "import sys, retia.cli, retia.dispatcher.service, retia.dispatcher.cli, retia.dispatcher.credential_cli; \
retia.cli.build_parser(); \
assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules"

# Cluster key, CurveZMQ certificate (curve/), journal (SQLite, WAL) and artefacts: mount a volume
# here. The key and certificate are created on first start; credentials are issued from them.
RUN mkdir -p /state
VOLUME ["/state"]
EXPOSE 5555

ENTRYPOINT ["tini", "--", "retia", "dispatcher"]
CMD ["--bind", "tcp://0.0.0.0:5555", "--home", "/state"]
