# The render-node image the farm documents in examples/farm name (jitrender:0.1.0): jitrender
# with the blender extra (bpy 5.0.1, Blender as a Python module, CPU Cycles), on Python 3.11.
#
#   docker build -t jitrender:0.1.0 .
#   docker run --rm jitrender:0.1.0 version
#
# The entrypoint is `jitrender`; farm documents give the whole command (`jitrender run JOB`).
# SIGTERM goes straight to jitrender (PID 1 here), which installs its own handler, stops the
# renderer's process group, flushes finished uploads and exits 75.

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY jitrender ./jitrender
COPY hooks ./hooks
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[blender]'

FROM python:3.11-slim-bookworm
# Libraries the bpy wheel links against even when rendering headless (X11 stubs, GL, OpenMP).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libx11-6 libxrender1 libxxf86vm1 libxfixes3 libxi6 libxkbcommon0 libsm6 libice6 \
        libgl1 libegl1 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'jitrender[blender]' \
    && rm -rf /wheels \
    && jitrender version
# The node-local cache: farm documents mount local SSD at /cache (or set JITRENDER_CACHE_DIR);
# jitrender creates its own 0700 folder below the mount.
ENV JITRENDER_CACHE_DIR=/cache/jitrender \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["jitrender"]
CMD ["--help"]
