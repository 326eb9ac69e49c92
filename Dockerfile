# CPU image of the infomax HTTP service (similar-image search over a FAISS index).
#
#   docker build -t infomax .
#   docker run -p 8000:8000 -v /srv/infomax:/data infomax
#       /srv/infomax/model  the serving artifact (encoder.safetensors + encoder.json)
#       /srv/infomax/index  the index folder (index.faiss, index.json, metadata.sqlite, images.sqlite),
#                           written by POST /v1/items: mount it read-write, owned by uid 10001
# See docs/DEPLOY.md; scripts/docker-e2e.sh builds, runs and checks it.
#
# Build arguments: TORCH_INDEX_URL (where the CPU build of torch comes from: PyTorch's own CPU
# index by default, or a local mirror), TORCH_VERSION, TORCHVISION_VERSION (left out when the index
# has no such build; only the resnet18 encoder needs it), PIP_INDEX_URL (everything else: unset by
# default, so pip follows its own configuration or built-in default; set it to use a mirror).
# Configuration at run time is by environment only: PORT, and the INFOMAX_* settings of
# service/settings.py (INFOMAX_ARTIFACT, INFOMAX_INDEX, INFOMAX_API_KEY, INFOMAX_CREATE_INDEX...).
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# No default: when given, pip reads it from the environment of each RUN.
ARG PIP_INDEX_URL

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120

# 1. torch (CPU build) first, from TORCH_INDEX_URL; its own dependencies may come from pip's index.
#    A CPU build's version carries a local label (2.14.1+cpu), which satisfies ==2.14.1, and sorts
#    above the CUDA build of PyPI, so the CPU one wins. Dropped: C++ headers, static libraries and
#    CMake files (only needed to compile extensions), compiled C++ test programs some builds ship.
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
 && if pip install --no-deps --index-url "$TORCH_INDEX_URL" "torchvision==$TORCHVISION_VERSION"; then \
        python -c "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
        || { echo "torchvision $TORCHVISION_VERSION does not work with torch $TORCH_VERSION: set TORCHVISION_VERSION" >&2; exit 1; }; \
    else echo "NOTE: no torchvision==$TORCHVISION_VERSION on $TORCH_INDEX_URL: left out (only the resnet18 encoder needs it)"; fi \
 && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/include" "$site"/torch/lib/*.a "$site/torch/share/cmake" "$site/torch/test" \
           "$site"/torch/bin/*Test "$site"/torch/bin/test_* "$site"/torch/bin/protoc* \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# 2. The project's other dependencies, keyed on pyproject.toml only (a code change keeps this layer).
#    The installed torch is a constraint: nothing may replace it by another build.
COPY pyproject.toml /tmp/build/pyproject.toml
COPY docker/requirements.py /tmp/build/requirements.py
RUN cd /tmp/build \
 && python requirements.py pyproject.toml > requirements.txt \
 && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > constraints.txt \
 && pip install -r requirements.txt -c constraints.txt \
 && rm -rf /tmp/build

# 3. The project itself, without re-resolving dependencies (pyproject pins torch==2.14.1 while the
#    image may carry another CPU build of torch; the import check below is what must hold).
COPY pyproject.toml README.md /tmp/src/
COPY infomax /tmp/src/infomax
COPY training /tmp/src/training
COPY service /tmp/src/service
RUN pip install --no-deps /tmp/src \
 && rm -rf /tmp/src \
 && python -c "import infomax, service.app, service.serve; print('infomax', infomax.__version__)"

# Non-root user; the data volume: /data/model (artifact, read-only is fine) and /data/index
# (index folder, written by POST /v1/items).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/infomax infomax \
 && mkdir -p /data/model /data/index \
 && chown -R infomax:infomax /data
VOLUME ["/data"]

# Every INFOMAX_* setting of service/settings.py can be given with -e; PORT is the port.
ENV PORT=8000 \
    INFOMAX_HOST=0.0.0.0 \
    INFOMAX_ARTIFACT=/data/model \
    INFOMAX_INDEX=/data/index

USER infomax
WORKDIR /home/infomax
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)" || exit 1

# Shell form so that the environment is expanded; exec makes the server PID 1 (it gets SIGTERM).
CMD exec infomax serve --port "$PORT"
