# retia worker image: CUDA runtime, GPU torch, the project. One container per GPU.
#
# Build from the repository root (the context must contain pyproject.toml):
#   docker build -f docker/worker.Dockerfile -t retia-worker:0.1.0 .
# Choose the torch build for your driver with the two build args, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
#   --build-arg TORCH_SPEC="torch==2.6.0"
# The torch wheels from that index bundle their own CUDA/cuDNN libraries; the host needs only a
# driver that is new enough for that CUDA version and the NVIDIA Container Toolkit.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# The PyTorch wheel index for one CUDA version (cu118, cu121, cu124, cu126, cu128, ...).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# What to install from it: "torch" (newest on that index) or a pin such as "torch==2.6.0".
ARG TORCH_SPEC=torch

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/retia/bin:$PATH

# Ubuntu 22.04's python3 is 3.10 (retia needs >= 3.10). tini reaps the trial processes' orphans.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/retia \
 && pip install --upgrade pip

# GPU torch FIRST, from the CUDA index: `pip install /src` below then finds torch>=2.1 already
# satisfied and never pulls the CPU (or a different CUDA) wheel from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

# The project (its other dependencies come from PyPI).
COPY pyproject.toml README.md /src/
COPY common /src/common
COPY client /src/client
COPY dispatcher /src/dispatcher
COPY worker /src/worker
RUN pip install /src \
 && rm -rf /src \
 && python -c "import torch, pytorch_lightning, retia.worker.agent; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Trial output directories (--home). Mount a volume here to keep them.
RUN mkdir -p /var/lib/retia
WORKDIR /var/lib/retia

# Each container sees its one GPU as device 0: `--gpu 0`.
ENTRYPOINT ["tini", "--", "retia", "worker"]
CMD ["--help"]
