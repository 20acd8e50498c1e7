# kubesandbox images: one Dockerfile, two final targets (docs/images.md).
#
#   docker build --target node-agent -t kubesandbox/node-agent .   # privileged DaemonSet, root
#   docker build --target controller -t kubesandbox/controller .   # operator + gateway, uid 65532
#
# Stages, in the order their layers change least often to most often:
#   guest-agent  Rust builder: the static guest agent (PID 1 in every VM), as guest-agent/build.sh
#   python-base  Debian + python3 + a venv holding the Python dependencies (not the project)
#   kernel       the pinned guest kernel and modules, fetched by the node agent's own code
#   wheel        the project built as a wheel (the only stage that sees the Python sources)
#   controller   python-base + the wheel, non-root
#   node-agent   python-base + QEMU & co + kernel + guest agent + the wheel, root
# Python sources come last so a code change rebuilds only the small final layers.

ARG PYTHON_VENV=/opt/kubesandbox

# --- the guest agent ----------------------------------------------------------------------------
FROM rust:1.95-bookworm AS guest-agent
# Unset everywhere but behind a TLS-intercepting proxy, where it names the proxy's CA bundle
# (the devenv passes one; docs/images.md). Only the path shows in the image history.
ARG CARGO_HTTP_CAINFO
WORKDIR /src/guest-agent
COPY guest-agent/ ./
# Exactly the project's build contract: gnu target, +crt-static, cargo --locked; build.sh
# checks the result has no interpreter and no NEEDED libraries and prints its path.
RUN mkdir -p /build && CARGO_TARGET_DIR=/build/target bash build.sh > /build/agent-path \
    && install -D -m 0755 "$(tail -n1 /build/agent-path)" /out/kubesandbox-agent \
    && rm -rf /build/target "$CARGO_HOME/registry"

# --- Python runtime and dependencies, shared by both targets ------------------------------------
FROM debian:bookworm-slim AS python-base
ARG PYTHON_VENV
# Like CARGO_HTTP_CAINFO above: pip's CA bundle behind a TLS-intercepting proxy, else unset.
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=${PYTHON_VENV} \
    PATH=${PYTHON_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"
# Dependencies from pyproject.toml only: this layer is reused until they change.
COPY pyproject.toml /tmp/deps/pyproject.toml
RUN python3 -c 'import tomllib, sys; sys.stdout.write("\n".join(tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]["dependencies"]) + "\n")' > /tmp/deps/requirements.txt \
    && pip install -r /tmp/deps/requirements.txt "setuptools>=69" wheel \
    && rm -rf /tmp/deps

# --- the pinned guest kernel --------------------------------------------------------------------
# Fetched and unpacked by node-agent/bootimage/kernel.py itself (apt-get download + dpkg-deb -x,
# plus the PVH vmlinux unpacked from the bzImage's lz4 payload), so the image holds exactly what
# a node agent would otherwise cache; KUBESANDBOX_KERNEL_DIR points the node agent at it.
FROM python-base AS kernel
RUN apt-get update \
    && apt-get install -y --no-install-recommends lz4 \
    && mkdir -p /tmp/k/kubesandbox_node/bootimage \
    && touch /tmp/k/kubesandbox_node/__init__.py /tmp/k/kubesandbox_node/bootimage/__init__.py
COPY node-agent/bootimage/kernel.py node-agent/bootimage/paths.py /tmp/k/kubesandbox_node/bootimage/
RUN cd /tmp/k && KUBESANDBOX_CACHE=/tmp/cache python3 -c 'from kubesandbox_node.bootimage import kernel; k = kernel.fetch(); assert kernel.ensure_vmlinux(k); print(k.root)' \
    && mkdir -p /usr/lib/kubesandbox \
    && mv /tmp/cache/kernel/* /usr/lib/kubesandbox/kernel

# --- the project as a wheel ---------------------------------------------------------------------
FROM python-base AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY api/ api/
COPY cli/ cli/
COPY common/ common/
COPY gateway/ gateway/
COPY kube/ kube/
COPY node-agent/ node-agent/
COPY operator/ operator/
COPY protocol/ protocol/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# --- operator and gateway -----------------------------------------------------------------------
FROM python-base AS controller
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels "$VIRTUAL_ENV/bin/kubesandbox-devenv"
USER 65532:65532
WORKDIR /tmp
CMD ["kubesandbox-operator"]

# --- the node agent -----------------------------------------------------------------------------
FROM python-base AS node-agent
# qemu-system-x86 (microvm), qemu-system-common (/usr/lib/qemu/virtiofsd), qemu-utils (qemu-img),
# erofs-utils and e2fsprogs (image and volume filesystems), iptables/iproute2/procps (sandbox
# networks), zstd (zstd image layers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        qemu-system-x86 qemu-system-common qemu-utils erofs-utils e2fsprogs \
        iptables iproute2 procps zstd ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=kernel /usr/lib/kubesandbox/kernel/ /usr/lib/kubesandbox/kernel/
COPY --from=guest-agent /out/kubesandbox-agent /usr/lib/kubesandbox/kubesandbox-agent
ENV KUBESANDBOX_KERNEL_DIR=/usr/lib/kubesandbox/kernel \
    KUBESANDBOX_GUEST_AGENT=/usr/lib/kubesandbox/kubesandbox-agent \
    KUBESANDBOX_CACHE=/var/cache/kubesandbox
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels "$VIRTUAL_ENV/bin/kubesandbox-devenv"
CMD ["kubesandbox-node-agent"]
