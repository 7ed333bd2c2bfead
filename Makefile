# fl: federated learning in C.  One GNU Makefile builds everything into build/.
#
#   make            build the library, binaries and tests
#   make test       build and run every test (unit and integration)
#   make test-stress  the suite three times each: idle, under a CPU hog, pinned to one core
#   make demo       the main job end to end on Fashion-MNIST
#   make tabular    the tabular path end to end: breast-cancer table, 5 non-IID clients
#   make bench      benchmarks, each reported against a baseline measured in the same run
#   make bench-scale  10,000 idle TLS connections held by one server (a few minutes)
#   make bench-robust  robust strategies against simulated attackers (10-20 minutes)
#   make bench-compression  compressed updates and models against accuracy (10-20 minutes)
#   make bench-privacy  secure aggregation and differential privacy against plain rounds (~30 minutes)
#   make fuzz       libFuzzer targets for a bounded time (FUZZ_SECONDS)
#   make fuzz-corpus  regenerate the committed seed inputs of the frame fuzzer
#   make certs      a CA, a server certificate and client certificates in certs/out/
#   make deps       install the Debian packages the project needs (when missing)
#   make install    PREFIX=/usr/local DESTDIR= (binaries, and libflclient: header, .so, .a, .pc)
#
#   make docker     the container images fl:latest and fl:demo (needs a Docker engine)
#
# Switches: V=1 (full commands), SANITIZER=address,undefined, EXTRA_CFLAGS=-Werror,
# NO_DEPS=1 (install no Debian packages: the Dockerfile's build stage has its own).

CC        ?= cc
PREFIX    ?= /usr/local
DESTDIR   ?=
SANITIZER ?=
EXTRA_CFLAGS ?=
FUZZ_SECONDS ?= 30

ifeq ($(V),1)
Q :=
say :=
else
Q := @
say = @printf '  %-7s %s\n' $(1) $(2);
endif

# Objects for each sanitizer set live apart, so switching back and forth costs nothing.
comma := ,
ifeq ($(SANITIZER),)
B := build
else
B := build/san-$(subst $(comma),-,$(SANITIZER))
endif
GEN := build/gen

DEB_PKGS := pkgconf libuv1-dev libmbedtls-dev libprotobuf-c-dev protobuf-c-compiler \
            libopenblas-dev zlib1g-dev libinih-dev libcriterion-dev openssl \
            dataset-fashion-mnist clang libclang-rt-14-dev g++ binutils \
            libmicrohttpd-dev gnuplot-nox libonnx-dev help2man

PKGS := libuv libprotobuf-c zlib inih openblas
CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -fno-strict-aliasing
ifneq ($(SANITIZER),)
CFLAGS_BASE += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS_SAN := -fsanitize=$(SANITIZER)
endif
CFLAGS_ALL = $(CFLAGS_BASE) $(EXTRA_CFLAGS) -Icommon -I$(GEN) -Iclient/include $(PKG_CFLAGS)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS := $(LDFLAGS_SAN)
LIBS = $(PKG_LIBS) -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -lm
# fl-server alone serves HTTP (--http: server/http.c)
HTTP_CFLAGS = $(shell pkg-config --cflags libmicrohttpd 2>/dev/null)
HTTP_LIBS = $(shell pkg-config --libs libmicrohttpd 2>/dev/null || echo -lmicrohttpd)

PROTOS      := $(wildcard proto/*.proto)
# ONNX's own schema, as Debian's libonnx-dev ships it: fl-export writes ONNX through it.
ONNX_PROTO  := /usr/include/onnx/onnx.proto
PROTO_C     := $(patsubst proto/%.proto,$(GEN)/%.pb-c.c,$(PROTOS)) $(GEN)/onnx.pb-c.c
PROTO_H     := $(PROTO_C:.c=.h)

COMMON_SRCS := $(wildcard common/*.c)
SERVER_SRCS := $(wildcard server/*.c)
LIBCLIENT_SRCS := $(wildcard client/lib_*.c)
TOOL_SRCS   := client/train_main.c client/predict_main.c client/export_main.c
CLIENT_SRCS := $(filter-out $(TOOL_SRCS) $(LIBCLIENT_SRCS),$(wildcard client/*.c))
TRAIN_SRCS  := $(wildcard client/train_main.c)
TEST_SRCS   := $(wildcard tests/test_*.c tests/testutil.c tests/main.c)
BENCH_SRCS  := $(wildcard bench/bench_*.c)
BENCH_SCRIPTS := $(wildcard bench/bench_*.sh)
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))
COMMON_OBJS := $(call obj,$(COMMON_SRCS)) $(patsubst $(GEN)/%.c,$(B)/obj/gen/%.o,$(PROTO_C))
LIB := $(B)/libfl.a

BINS := $(if $(SERVER_SRCS),$(B)/fl-server) $(if $(CLIENT_SRCS),$(B)/fl-client) \
        $(if $(TRAIN_SRCS),$(B)/fl-train) $(B)/fl-predict $(B)/fl-export

# libflclient (client/include/fl/client.h): its own files and the part of libfl it
# stands on (transport, protocol, model identity: the spec parser is the training core's
# table of layers, so the core and OpenBLAS come along), compiled position-independent into
# $(B)/pic for both the shared and the static library.  Only fl_client_* is exported:
# the version script for the .so, objcopy for the .a (one object, the rest made local),
# and the committed list client/libflclient.symbols is checked against both.
LIBCLIENT_COMMON := common/error.c common/rng.c common/model.c common/frame.c common/msg.c \
                    common/tls.c common/conn.c common/netaddr.c common/ticket.c common/fileio.c \
                    common/codec.c common/kth.c common/log_budget.c \
                    common/secagg.c common/shamir.c common/agree.c common/prg.c common/csprng.c \
                    common/layers.c common/dense.c common/conv.c common/maxpool.c \
                    common/avgpool.c common/batchnorm.c common/activation.c common/dropout.c \
                    common/loss.c common/optim.c
pic = $(patsubst %.c,$(B)/pic/%.o,$(1))
LIBCLIENT_PIC := $(call pic,$(LIBCLIENT_SRCS) $(LIBCLIENT_COMMON)) $(B)/pic/gen/fl.pb-c.o
LIBCLIENT_LIBS = $(shell pkg-config --libs libuv libprotobuf-c zlib openblas 2>/dev/null) \
                 -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -lm
LIBCLIENT_HEADER := client/include/fl/client.h
LIBCLIENT_MAJOR := $(shell sed -n 's/^\#define FL_CLIENT_VERSION_MAJOR //p' $(LIBCLIENT_HEADER))
LIBCLIENT_VERSION := $(LIBCLIENT_MAJOR).$(shell sed -n 's/^\#define FL_CLIENT_VERSION_MINOR //p' $(LIBCLIENT_HEADER)).$(shell sed -n 's/^\#define FL_CLIENT_VERSION_PATCH //p' $(LIBCLIENT_HEADER))
LIBCLIENT_SO := $(B)/libflclient.so.$(LIBCLIENT_MAJOR)
LIBCLIENT_A := $(B)/libflclient.a
LIBCLIENT := $(LIBCLIENT_SO) $(B)/libflclient.so $(LIBCLIENT_A) $(B)/libflclient.checked \
             $(B)/flclient.pc
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share/fl
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
STAGE := $(B)/stage
TEST_BIN := $(B)/tests/fl-tests
BENCH_BINS := $(patsubst bench/bench_%.c,$(B)/bench-%,$(BENCH_SRCS))

.PHONY: FORCE docker all deps tabular test test-stress bench bench-robust bench-compression bench-privacy bench-scale fuzz fuzz-corpus demo certs clean install uninstall man
.DEFAULT_GOAL := all
.SECONDARY:
all: $(BINS) $(B)/fl-plot $(LIBCLIENT) $(TEST_BIN) $(BENCH_BINS)

# make deps: cheap and silent when everything is there.  TEST_DEB_PKGS are what only the
# tests use (launchers: Open MPI's mpirun, a one-node Slurm with munge; Prometheus and
# headless Chromium for the status page's tests; ONNX's checker and NumPy for the exported
# models), installed without their recommendations.  kubectl is not among them: see KUBECTL below.
TEST_DEB_PKGS := openmpi-bin slurmctld slurmd slurm-client munge prometheus chromium \
                 python3-onnx python3-numpy
deps:
	@[ "$(NO_DEPS)" != 1 ] || exit 0; \
	install_missing() { \
	  missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $$2 2>/dev/null \
	    | awk '$$1=="ii"{print $$2}' | sed 's/:.*//' | sort > build.deps.tmp; \
	  for p in $$2; do grep -qx "$$p" build.deps.tmp || echo $$p; done; rm -f build.deps.tmp); \
	  [ -z "$$missing" ] && return 0; \
	  echo "deps: installing missing Debian packages:" $$missing; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$1 $$missing; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$1 $$missing; \
	  else echo "deps: run as root: apt-get install -y $$1 $$missing" >&2; return 1; fi; \
	}; \
	install_missing "" "$(DEB_PKGS)" && install_missing --no-install-recommends "$(TEST_DEB_PKGS)"

# Any change of flags rebuilds the objects of that build directory.
$(B)/flags: FORCE | deps
	@mkdir -p $(B)
	@echo '$(CC) $(CFLAGS_ALL) $(LIBS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS_ALL) $(LIBS)' > $@
FORCE:

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto | deps
	$(call say,PROTOC,$<)
	@mkdir -p $(GEN)
	$(Q)protoc-c --proto_path=proto --c_out=$(GEN) $<

$(GEN)/onnx.pb-c.c $(GEN)/onnx.pb-c.h: | deps
	$(call say,PROTOC,$(ONNX_PROTO))
	@mkdir -p $(GEN)
	$(Q)protoc-c --proto_path=$(dir $(ONNX_PROTO)) --c_out=$(GEN) $(ONNX_PROTO)

$(B)/obj/gen/%.o: $(GEN)/%.c $(B)/flags
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -Wno-unused-parameter -MMD -MP -c -o $@ $<

$(B)/obj/%.o: %.c $(B)/flags | $(PROTO_H)
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

# The training core's element-wise loops (bias, activations, optimizers) need the full
# vectoriser: at -O2 GCC only vectorises loops whose trip count is a known multiple of the
# vector width.  -ffp-contract=off (already implied by -std=c11) keeps multiply-adds
# unfused in every clone of a loop, so vector width never changes a result; the optimizer
# needs -fno-math-errno for sqrtf to vectorise (it never sets errno: v >= 0).
CORE_OBJS := $(call obj,$(wildcard common/dense.c common/conv.c common/activation.c \
                                   common/dropout.c common/maxpool.c common/avgpool.c \
                                   common/batchnorm.c common/loss.c common/optim.c \
                                   common/train.c))
$(CORE_OBJS): CFLAGS_ALL += -O3 -ffp-contract=off
$(call obj,common/optim.c): CFLAGS_ALL += -fno-math-errno
# The aggregation's loops are vectorised the same way (common/agg_*.c, server_opt.c), and
# the codec's (int8 and float32 chunks decoded and folded into the sum).
$(call obj,$(wildcard common/agg_*.c common/server_opt.c)): CFLAGS_ALL += -O3
$(call obj,common/codec.c): CFLAGS_ALL += -O3 -ffp-contract=off

$(LIB): $(COMMON_OBJS)
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(call obj,server/http.c): CFLAGS_ALL += $(HTTP_CFLAGS)
# The status page (server/status_page.html) is embedded as the C array srv_status_page.
$(GEN)/status_page.c: server/status_page.html
	$(call say,EMBED,$<)
	@mkdir -p $(GEN)
	$(Q){ echo '/* generated from $< */'; echo 'const char srv_status_page[] = {'; \
	  od -An -v -tx1 $< | sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0};'; } > $@.tmp && mv $@.tmp $@
$(B)/fl-server: $(call obj,$(SERVER_SRCS)) $(B)/obj/gen/status_page.o $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS) $(HTTP_LIBS)
# fl-plot (server/fl-plot): accuracy and loss per round from metrics files, with gnuplot.
$(B)/fl-plot: server/fl-plot
	@mkdir -p $(B)
	$(Q)install -m 0755 $< $@
$(B)/fl-client: $(call obj,$(CLIENT_SRCS)) $(LIBCLIENT_A) $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)

# ---- libflclient ----
$(B)/pic/gen/%.o: $(GEN)/%.c $(B)/flags
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -fPIC -Wno-unused-parameter -MMD -MP -c -o $@ $<
$(B)/pic/%.o: %.c $(B)/flags | $(PROTO_H)
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -fPIC -MMD -MP -c -o $@ $<

$(LIBCLIENT_SO): $(LIBCLIENT_PIC) client/libflclient.map
	$(call say,LINK,$@)
	$(Q)$(CC) -shared -o $@ -Wl,-soname,$(notdir $@) -Wl,--version-script=client/libflclient.map \
	  -Wl,--no-undefined $(LIBCLIENT_PIC) $(LDLIBS) $(LIBCLIENT_LIBS)
$(B)/libflclient.so: $(LIBCLIENT_SO)
	$(Q)ln -sf $(notdir $<) $@
$(LIBCLIENT_A): $(LIBCLIENT_PIC) client/libflclient.symbols
	$(call say,AR,$@)
	$(Q)ld -r -o $(B)/pic/libflclient-all.o $(LIBCLIENT_PIC) && \
	  objcopy --keep-global-symbols=client/libflclient.symbols $(B)/pic/libflclient-all.o \
	    $(B)/pic/libflclient.o && rm -f $@ && ar rcs $@ $(B)/pic/libflclient.o
# An accidental change of the ABI fails the build: what the libraries export must be
# the committed list (change it, and the soname when a symbol goes away, on purpose).
# The header must compile as C99, C11 and C++11, pedantic and warning-free.
$(B)/libflclient.checked: $(LIBCLIENT_SO) $(LIBCLIENT_A) client/libflclient.symbols \
                          client/check-symbols.sh $(LIBCLIENT_HEADER)
	$(call say,CHECK,$(LIBCLIENT_SO))
	$(Q)client/check-symbols.sh client/libflclient.symbols $(LIBCLIENT_SO) $(LIBCLIENT_A)
	$(Q)for std in c99 c11; do echo '#include <fl/client.h>' | \
	  $(CC) -std=$$std -pedantic -Wall -Wextra -Werror -Iclient/include -x c -fsyntax-only - || exit 1; done
	$(Q)echo '#include <fl/client.h>' | \
	  g++ -std=c++11 -pedantic -Wall -Wextra -Werror -Iclient/include -x c++ -fsyntax-only -
	$(Q)touch $@
# The pkg-config file, for the PREFIX of this make (rewritten when it changes).
$(B)/flclient.pc: FORCE | deps
	@mkdir -p $(B)
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCLUDEDIR)' '' \
	  'Name: flclient' 'Description: federated learning client library of fl (libflclient)' \
	  'Version: $(LIBCLIENT_VERSION)' 'Requires.private: libuv libprotobuf-c zlib openblas' \
	  'Libs: -L$${libdir} -lflclient' \
	  'Libs.private: -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -lm' \
	  'Cflags: -I$${includedir}' > $@.tmp && \
	  if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
$(B)/fl-train: $(call obj,$(TRAIN_SRCS)) $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
# fl-predict and fl-export: what a finished federation's model is used for.
$(B)/fl-%: $(B)/obj/client/%_main.o $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
$(B)/bench-%: $(B)/obj/bench/bench_%.o $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $(filter-out $(LIB),$^) $(LIB) $(LDLIBS) $(LIBS)
$(B)/obj/tests/test_launch.o: CFLAGS_ALL += -Iclient

# All tests link into one Criterion binary: one summary line closes the run.
$(TEST_BIN): $(call obj,$(TEST_SRCS)) $(B)/obj/client/launch.o $(B)/obj/client/config.o \
             $(LIBCLIENT_A) $(LIB)
	$(call say,LINK,$@)
	@mkdir -p $(dir $@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS) $(shell pkg-config --libs criterion 2>/dev/null || echo -lcriterion)

KUBECTL := build/tools/usr/bin/kubectl
# The breast-cancer Wisconsin table of Debian's python3-sklearn, for the tabular example
# (examples/tabular/run.sh) and its test: extracted from the package, not installed.
BREAST_CANCER := build/tools/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv

# Integration tests find the binaries and test certificates through the environment.
# tests/test_scale.c connects 1000 clients (certificates in scale-certs), under the
# sanitizers too (the whole suite then took 93 s on 2 cores); SCALE_TEST_CLIENTS=N runs
# it with fewer, should a slower machine need that.
SCALE_CLIENTS := 1000
SCALE_TEST_CLIENTS ?=
TEST_ENV = FL_BIN_DIR=$(CURDIR)/$(B) FL_SRC_DIR=$(CURDIR) FL_CERTS=$(CURDIR)/$(B)/test-certs \
           FL_SCALE_CERTS=$(CURDIR)/$(B)/scale-certs FL_KUBECTL=$(CURDIR)/$(KUBECTL) \
           FL_STAGE=$(CURDIR)/$(STAGE) FL_PREFIX=$(PREFIX) FL_LIBDIR=$(LIBDIR) \
           FL_INCLUDEDIR=$(INCLUDEDIR) FL_SANITIZER=$(SANITIZER) \
           FL_TABULAR_CSV=$(CURDIR)/$(BREAST_CANCER) \
           $(if $(SCALE_TEST_CLIENTS),FL_TEST_SCALE_CLIENTS=$(SCALE_TEST_CLIENTS)) \
           LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
# The suite runs every process with OpenBLAS's Haswell kernels where the CPU has AVX2
# and FMA: the same bits in the test process and in the binaries it starts, and the ones
# tests/test_fingerprint.c recorded.  (The binaries pick the best kernels themselves,
# common/blaskernels.h; blas::binaries_pick_kernels_for_the_cpu tests that, without it.)
TEST_BLAS := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo Haswell)
TEST_CERT_CLIENTS := 24
TEST_CERTS := $(B)/test-certs/client-00$(TEST_CERT_CLIENTS).crt
test: $(BINS) $(B)/fl-plot $(TEST_BIN) $(TEST_CERTS) $(B)/scale-certs/ca.crt $(KUBECTL) \
      $(BREAST_CANCER) $(STAGE)/.installed
	$(Q)$(TEST_ENV) $(if $(TEST_BLAS),OPENBLAS_CORETYPE=$(TEST_BLAS)) $(TEST_BIN) $(TEST_ARGS)

# kubectl for the manifest tests (tests/test_kubernetes.c): Debian's kubernetes-client,
# unpacked into build/tools (apt-get download, dpkg-deb -x) rather than installed, since
# its /usr/bin/kubectl collides with other kubectl packages that may own that path (this
# machine's google-cloud-cli has one).
$(KUBECTL): | deps
	$(call say,UNPACK,$@)
	$(Q)rm -rf build/tools.tmp && mkdir -p build/tools.tmp && cd build/tools.tmp && \
	  { apt-get download kubernetes-client >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get download kubernetes-client; }; } && \
	  dpkg-deb -x kubernetes-client_*.deb ../tools && cd .. && rm -rf tools.tmp && touch $(CURDIR)/$@

$(BREAST_CANCER): | deps
	$(call say,UNPACK,$@)
	$(Q)rm -rf build/sklearn.tmp && mkdir -p build/sklearn.tmp && cd build/sklearn.tmp && \
	  { apt-get download python3-sklearn >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get download python3-sklearn; }; } && \
	  dpkg-deb --fsys-tarfile python3-sklearn_*.deb | \
	    tar -x -C ../tools ./usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv && \
	  cd .. && rm -rf sklearn.tmp && touch $(CURDIR)/$@

# The tabular path end to end (examples/tabular/run.sh): a federation of 5 non-IID
# clients with federated standardisation against fl-train, AUC and accuracy side by side.
tabular: $(BINS) $(BREAST_CANCER)
	$(Q)FL_BIN_DIR=$(CURDIR)/$(B) FL_TABULAR_CSV=$(CURDIR)/$(BREAST_CANCER) examples/tabular/run.sh

# `make install` into a stage (DESTDIR): the tests build the libflclient examples against
# it with pkg-config, as a user of the installed library would.
$(STAGE)/.installed: $(BINS) $(LIBCLIENT) $(LIBCLIENT_HEADER) Makefile
	$(call say,INSTALL,$(STAGE))
	$(Q)rm -rf $(STAGE) && $(MAKE) --no-print-directory -s install DESTDIR=$(CURDIR)/$(STAGE) \
	  >/dev/null && touch $@

$(TEST_CERTS): certs/gen.sh | deps
	$(call say,CERTS,$(B)/test-certs)
	$(Q)rm -rf $(B)/test-certs && certs/gen.sh --out $(B)/test-certs --clients $(TEST_CERT_CLIENTS) --quiet

$(B)/scale-certs/ca.crt: certs/gen.sh | deps
	$(call say,CERTS,$(B)/scale-certs)
	$(Q)rm -rf $(B)/scale-certs $(B)/scale-certs.tmp && \
	  certs/gen.sh --out $(B)/scale-certs.tmp --clients $(SCALE_CLIENTS) --quiet && \
	  mv $(B)/scale-certs.tmp $(B)/scale-certs

# The whole suite, again and again, on a machine made busy or small on purpose (idle, a
# CPU hog per core, pinned to one core): tests/stress.sh.  Not part of CI's path.
RUNS ?= 3
test-stress: $(BINS) $(TEST_BIN) $(TEST_CERTS) $(B)/scale-certs/ca.crt $(KUBECTL) $(BREAST_CANCER) \
             $(STAGE)/.installed
	$(Q)tests/stress.sh $(RUNS)

certs: | deps
	$(Q)certs/gen.sh --out certs/out

# A benchmark may report a figure below its target on a busy machine; it fails only when
# something went wrong, and then this says which one and how it ended.
bench: $(BENCH_BINS) $(BINS) $(TEST_CERTS) $(B)/scale-certs/ca.crt
	$(Q)for b in $(BENCH_BINS) $(BENCH_SCRIPTS); do echo "== $$b"; $(TEST_ENV) ./$$b; rc=$$?; \
	  if [ $$rc -ne 0 ]; then \
	    if [ $$rc -gt 128 ]; then how="killed by signal $$((rc - 128)) ($$(kill -l $$((rc - 128))))"; \
	    else how="exit status $$rc"; fi; \
	    echo "bench: $$b FAILED: $$how (its messages are above)" >&2; exit 1; fi; \
	done

# Robust aggregation against simulated attackers, and the server optimizers on non-IID
# data (bench/robust.sh; 10-20 minutes on 2 cores).
bench-robust: $(BINS) $(B)/scale-certs/ca.crt
	$(Q)$(TEST_ENV) bench/robust.sh

# Update and model compression against accuracy (bench/compression.sh; 10-20 minutes).
bench-compression: $(BINS) $(B)/scale-certs/ca.crt
	$(Q)$(TEST_ENV) bench/compression.sh

# Secure aggregation's and differential privacy's costs (bench/privacy.sh; about 30 minutes).
bench-privacy: $(BINS) $(B)/scale-certs/ca.crt
	$(Q)$(TEST_ENV) bench/privacy.sh

SCALE10K_CLIENTS := 10000
$(B)/scale10k-certs/ca.crt: certs/gen.sh | deps
	$(call say,CERTS,$(B)/scale10k-certs)
	$(Q)rm -rf $(B)/scale10k-certs $(B)/scale10k-certs.tmp && \
	  certs/gen.sh --out $(B)/scale10k-certs.tmp --clients $(SCALE10K_CLIENTS) --quiet && \
	  mv $(B)/scale10k-certs.tmp $(B)/scale10k-certs
bench-scale: $(BINS) $(B)/scale10k-certs/ca.crt
	$(Q)echo "== bench/idle_connections.sh $(SCALE10K_CLIENTS)"; \
	  $(TEST_ENV) FL_SCALE10K_CERTS=$(CURDIR)/$(B)/scale10k-certs \
	  bench/idle_connections.sh $(SCALE10K_CLIENTS)

# Fuzzing needs clang's libFuzzer; objects are built apart with their own flags.  Each
# target runs FUZZ_SECONDS on its seeds (tests/fuzz/corpus/NAME) plus what it found before
# (build/fuzz/corpus-NAME); a crash, leak or hang fails with the log's tail and leaves the
# input in build/fuzz/.  `make fuzz-corpus` regenerates the committed frame seeds.
FUZZ_DIR := build/fuzz
FUZZ_CFLAGS := -std=c11 -O1 -g -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=all -Icommon -I$(GEN)
FUZZ_BINS := $(patsubst tests/fuzz/fuzz_%.c,$(FUZZ_DIR)/fuzz_%,$(FUZZ_SRCS))
# The frame target (bytes from the network) gets at least this long in CI.
FUZZ_FRAME_SECONDS ?= $(FUZZ_SECONDS)
$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(COMMON_SRCS) $(wildcard common/*.h) $(PROTO_C) $(PROTO_H) | deps
	$(call say,FUZZ,$@)
	@mkdir -p $(FUZZ_DIR)
	$(Q)clang $(FUZZ_CFLAGS) $(PKG_CFLAGS) -o $@ $< $(COMMON_SRCS) $(PROTO_C) $(LIBS)
fuzz: $(FUZZ_BINS)
	$(Q)for f in $(FUZZ_BINS); do n=$${f##*/fuzz_}; mkdir -p $(FUZZ_DIR)/corpus-$$n; \
	  t=$(FUZZ_SECONDS); [ $$n = frame ] && t=$(FUZZ_FRAME_SECONDS); \
	  echo "== $$f for $${t}s"; \
	  $$f -max_total_time=$$t -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_DIR)/$$n- $(FUZZ_DIR)/corpus-$$n tests/fuzz/corpus/$$n \
	    2>$(FUZZ_DIR)/$$n.log || { l=$(FUZZ_DIR)/$$n.log; \
	    grep -m1 -A40 -E '==ERROR|runtime error|deadly signal|ERROR: libFuzzer' $$l || tail -60 $$l; \
	    grep -E '^MS:|Test unit written|^Base64|stat::number_of_executed_units' $$l; \
	    echo "fuzz: $$n FAILED (full log: $$l)"; exit 1; }; \
	  grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added' $(FUZZ_DIR)/$$n.log; \
	done

$(B)/gen_corpus: $(B)/obj/tests/fuzz/gen_corpus.o $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
fuzz-corpus: $(B)/gen_corpus
	$(Q)mkdir -p tests/fuzz/corpus/frame && $(B)/gen_corpus tests/fuzz/corpus/frame

# Container images (Dockerfile): where a Docker engine answers; it says so otherwise.
DOCKER ?= docker
docker:
	@command -v $(DOCKER) >/dev/null || { echo "make docker: no '$(DOCKER)' command: install Docker (Debian: docker.io) to build the images" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make docker: '$(DOCKER)' is there but no Docker engine answers ('$(DOCKER) info' failed): start dockerd, or build where one runs" >&2; exit 1; }
	$(DOCKER) build --target runtime -t fl:latest .
	$(DOCKER) build --target demo -t fl:demo .

demo: $(BINS) $(B)/fl-plot
	$(Q)FL_BIN_DIR=$(CURDIR)/$(B) examples/demo.sh

# Man pages from each binary's --help and --version (help2man, Debian's), with a NAME line
# each; the option tables are the one source of both.
MAN_NAME_fl-server := federated learning aggregation server
MAN_NAME_fl-client := federated learning client: trains on local data, sends weight deltas
MAN_NAME_fl-train := centralized training baseline for fl models
MAN_NAME_fl-predict := predictions of a trained fl model on a dataset
MAN_NAME_fl-export := export a trained fl model to ONNX or NumPy
MAN_NAME_fl-plot := accuracy and loss per round from fl-server metrics files
FL_VERSION_STR := $(shell sed -n 's/.*define FL_VERSION "\(.*\)".*/\1/p' common/version.h)
MANS := $(patsubst $(B)/%,$(B)/man/%.1,$(BINS) $(B)/fl-plot)
$(B)/man/%.1: $(B)/% | deps
	$(call say,MAN,$@)
	$(Q)mkdir -p $(@D) && help2man --no-info --no-discard-stderr --section 1 \
	  --version-string '$(FL_VERSION_STR)' --name '$(MAN_NAME_$*)' --output $@.tmp ./$< && \
	  mv $@.tmp $@
man: $(MANS)

# The units and example configurations as installed: the paths they name are those of
# this install (BINDIR, SYSCONFDIR), so they work from where they land.
INSTALLED_SED := -e 's|/usr/local/bin|$(BINDIR)|g' -e 's|/etc/fl|$(SYSCONFDIR)/fl|g' \
                 -e 's|certs/out/|$(SYSCONFDIR)/fl/certs/|g' -e 's|= certs/out$$|= $(SYSCONFDIR)/fl/certs|'
EXAMPLE_INIS := $(wildcard examples/*.ini)
INSTALLED_FILES := $(addprefix $(BINDIR)/,$(notdir $(BINS)) fl-plot) \
  $(addprefix $(MANDIR)/man1/,$(notdir $(MANS))) \
  $(UNITDIR)/fl-server.service $(UNITDIR)/fl-client@.service \
  $(INCLUDEDIR)/fl/client.h $(LIBDIR)/$(notdir $(LIBCLIENT_SO)) $(LIBDIR)/libflclient.so \
  $(LIBDIR)/$(notdir $(LIBCLIENT_A)) $(LIBDIR)/pkgconfig/flclient.pc \
  $(addprefix $(DATADIR)/examples/,$(notdir $(EXAMPLE_INIS))) $(DATADIR)/fl.proto \
  $(DATADIR)/gen-certs.sh

# DESTDIR stages the whole tree for a packager; `make uninstall` (same PREFIX and
# DESTDIR) removes exactly what install put there.
install: $(BINS) $(B)/fl-plot $(LIBCLIENT) $(MANS)
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(BINS) $(B)/fl-plot $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(MANDIR)/man1
	install -m 0644 $(MANS) $(DESTDIR)$(MANDIR)/man1/
	install -d $(DESTDIR)$(INCLUDEDIR)/fl $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 0644 $(LIBCLIENT_HEADER) $(DESTDIR)$(INCLUDEDIR)/fl/
	install -m 0755 $(LIBCLIENT_SO) $(DESTDIR)$(LIBDIR)/
	ln -sf $(notdir $(LIBCLIENT_SO)) $(DESTDIR)$(LIBDIR)/libflclient.so
	install -m 0644 $(LIBCLIENT_A) $(DESTDIR)$(LIBDIR)/
	install -m 0644 $(B)/flclient.pc $(DESTDIR)$(LIBDIR)/pkgconfig/
	install -d $(DESTDIR)$(UNITDIR)
	for u in fl-server.service fl-client@.service; do \
	  sed $(INSTALLED_SED) examples/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u; done
	install -d $(DESTDIR)$(DATADIR)/examples
	for f in $(notdir $(EXAMPLE_INIS)); do \
	  sed $(INSTALLED_SED) examples/$$f > $(DESTDIR)$(DATADIR)/examples/$$f && chmod 0644 $(DESTDIR)$(DATADIR)/examples/$$f; done
	install -m 0644 proto/fl.proto $(DESTDIR)$(DATADIR)/
	install -m 0755 certs/gen.sh $(DESTDIR)$(DATADIR)/gen-certs.sh

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	-rmdir $(DESTDIR)$(DATADIR)/examples $(DESTDIR)$(DATADIR) $(DESTDIR)$(INCLUDEDIR)/fl 2>/dev/null

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
