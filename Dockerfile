# fl in containers, on Debian 12.  `make docker` builds two images:
#   fl:latest  the runtime: fl-server, fl-client, fl-train, fl-predict and fl-export, the
#              shared libraries they link and nothing else, run as the unprivileged user
#              fl (uid 10001)
#   fl:demo    the same with Debian's Fashion-MNIST, for examples/compose and
#              examples/kubernetes (a real client mounts its own data instead)
# The build stage has the compilers and -dev packages; the runtime takes from it only
# the binaries and the list of Debian packages that hold the libraries they link.
ARG DEBIAN=debian:12-slim

FROM ${DEBIAN} AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      make gcc libc6-dev pkgconf libuv1-dev libmbedtls-dev libprotobuf-c-dev \
      protobuf-c-compiler libopenblas-dev zlib1g-dev libinih-dev libmicrohttpd-dev libonnx-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY proto proto
COPY common common
COPY server server
COPY client client
# NO_DEPS: the packages are here already; make must not install the test tools.
RUN make -j"$(nproc)" NO_DEPS=1 build/fl-server build/fl-client build/fl-train \
      build/fl-predict build/fl-export \
    && strip build/fl-server build/fl-client build/fl-train build/fl-predict build/fl-export \
    && for b in build/fl-server build/fl-client build/fl-train build/fl-predict build/fl-export; do \
         ldd "$b" | awk '$3 ~ /^\// {print $3}'; done | sort -u | while read -r lib; do \
         real=$(readlink -f "$lib"); \
         for p in "$lib" "$real" "/usr$lib" "${real#/usr}"; do dpkg -S "$p" 2>/dev/null && break; done \
           || { echo "no package holds $lib" >&2; exit 1; }; \
       done | cut -d: -f1 | sort -u > build/runtime-packages \
    && cat build/runtime-packages

FROM ${DEBIAN} AS runtime
COPY --from=build /src/build/runtime-packages /tmp/runtime-packages
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      $(cat /tmp/runtime-packages) \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/fl --create-home fl
COPY --from=build /src/build/fl-server /src/build/fl-client /src/build/fl-train \
     /src/build/fl-predict /src/build/fl-export /usr/local/bin/
COPY --from=build /src/server/fl-plot /usr/local/bin/
USER fl
WORKDIR /var/lib/fl
EXPOSE 7700
CMD ["fl-server", "--help"]

FROM runtime AS demo
USER root
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      dataset-fashion-mnist gnuplot-nox && rm -rf /var/lib/apt/lists/*
USER fl
