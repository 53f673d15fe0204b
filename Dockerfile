# ntk-eos dashboard, served by `panel serve` behind `ntk-eos serve`.
#   docker build -t ntk-eos .
#   docker run -p 5006:5006 -e BOKEH_ALLOW_WS_ORIGIN=localhost:5006 ntk-eos
# then open http://localhost:5006/main. See docs/deploy.md for auth, reverse proxies and the
# server limits (hosted mode here; NTK_EOS_* variables change them).
FROM python:3.12-slim

# The CPU build of torch: the default wheel is a multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    BOKEH_ALLOW_WS_ORIGIN=localhost:5006 \
    NTK_EOS_MODE=hosted

RUN useradd --create-home --uid 1000 ntk
WORKDIR /srv/ntk-eos

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY ntk_core ./ntk_core
COPY app ./app
COPY data ./data
RUN pip install -e . && mkdir -p /srv/ntk-eos/runs && chown ntk:ntk /srv/ntk-eos/runs

USER ntk
EXPOSE 5006
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:5006/liveness?endpoint=/main', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
CMD ["ntk-eos", "serve", "--address", "0.0.0.0", "--port", "5006"]
