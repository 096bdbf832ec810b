# The melplan serving runtime: the image the manifests of `melplan export --format k8s` run
# (component servers and the gateway, docs/export.md). CPU-only torch; the shipped catalog's
# weights baked in at /models/weights, where the manifests look for them.
#
#   docker build -t melplan-runtime:latest .
#
# Not built in CI: no base image can be pulled there (see docs/export.md, "The runtime image").
FROM python:3.11-slim-bookworm

# The torch and torchvision versions the catalog's weights were loaded and tested with here, from
# PyTorch's CPU-only wheel index (no CUDA libraries in the image).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# melplan with its serving extra; torch is already there, so pip keeps the CPU build.
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md CHANGELOG.md ./
COPY melplan/ melplan/
COPY catalog/ catalog/
RUN pip install ".[serve]" \
 && python -c "import torch, melplan.serve.component, melplan.serve.gateway; assert not torch.cuda.is_available(); print('torch', torch.__version__)"

# The weights at a fixed path: a family's weights file `weights/<name>.pt` (relative to its catalog
# entry) is /models/weights/<name>.pt, which is what MELPLAN_WEIGHTS names in the manifests. Each
# component checks the file's SHA-256 (MELPLAN_WEIGHTS_SHA256) before loading it.
RUN mkdir -p /models/weights \
 && cp catalog/*/weights/*.pt /models/weights/ \
 && cd /models/weights && sha256sum *.pt > /models/SHA256SUMS \
 && rm -rf /src

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin melplan
USER 10001:10001
WORKDIR /home/melplan

# The manifests' containers listen on 8080 (MELPLAN_PORT) and bind 0.0.0.0 because they say so
# (--host $(MELPLAN_HOST)); without --host every program binds 127.0.0.1.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD \
    python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('MELPLAN_PORT', '8080'), timeout=2)"

CMD ["python", "-m", "melplan.serve.gateway", "--help"]
