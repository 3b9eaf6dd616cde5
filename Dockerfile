# pylitefs: a node that mounts at /litefs and runs the application through `exec:`.
#
#   docker build -t pylitefs .
#   docker run --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined --init \
#       -e PYLITEFS_CLUSTER_SECRET=... -e PYLITEFS_ETCD_ENDPOINTS=http://etcd:2379 -p 8080:8080 pylitefs
#
# The configuration is docker/litefs.yml (/etc/litefs.yml in the image);
# docker/entrypoint.sh lists the variables it reads. docker/compose.yml runs
# three nodes and etcd.

# pyfuse3 compiles against libfuse3: build the wheels in a stage of their own.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fs fs
COPY replication replication
COPY election election
COPY pylitefs pylitefs
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# fuse3: libfuse3 and fusermount3; sqlite3: the CLI, to look at databases in /litefs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 sqlite3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels pylitefs && rm -rf /wheels
COPY docker/litefs.yml /etc/litefs.yml
COPY docker/entrypoint.sh /usr/local/bin/pylitefs-entrypoint
RUN mkdir -p /litefs /var/lib/litefs
# The data dir holds the databases and their logs: keep it across containers.
VOLUME /var/lib/litefs
# 20202: HTTP API and replication stream; 8080: the proxy in front of the application.
EXPOSE 20202 8080
ENTRYPOINT ["/usr/local/bin/pylitefs-entrypoint"]
