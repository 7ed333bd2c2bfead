# fl: federated learning in C.  One GNU Makefile builds everything into build/.
#
#   make            build the library, binaries and tests
#   make test       build and run every test (unit and integration)
#   make demo       the main job end to end on Fashion-MNIST
#   make bench      benchmarks, each reported against a baseline measured in the same run
#   make bench-scale  10,000 idle TLS connections held by one server (a few minutes)
#   make fuzz       libFuzzer targets for a bounded time (FUZZ_SECONDS)
#   make fuzz-corpus  regenerate the committed seed inputs of the frame fuzzer
#   make certs      a CA, a server certificate and client certificates in certs/out/
#   make deps       install the Debian packages the project needs (when missing)
#   make install    PREFIX=/usr/local DESTDIR=
#
# Switches: V=1 (full commands), SANITIZER=address,undefined, EXTRA_CFLAGS=-Werror.

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
            dataset-fashion-mnist clang libclang-rt-14-dev

PKGS := libuv libprotobuf-c zlib inih openblas
CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -fno-strict-aliasing
ifneq ($(SANITIZER),)
CFLAGS_BASE += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS_SAN := -fsanitize=$(SANITIZER)
endif
CFLAGS_ALL = $(CFLAGS_BASE) $(EXTRA_CFLAGS) -Icommon -I$(GEN) $(PKG_CFLAGS)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS := $(LDFLAGS_SAN)
LIBS = $(PKG_LIBS) -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -lm

PROTOS      := $(wildcard proto/*.proto)
PROTO_C     := $(patsubst proto/%.proto,$(GEN)/%.pb-c.c,$(PROTOS))
PROTO_H     := $(PROTO_C:.c=.h)

COMMON_SRCS := $(wildcard common/*.c)
SERVER_SRCS := $(wildcard server/*.c)
CLIENT_SRCS := $(filter-out client/train_main.c,$(wildcard client/*.c))
TRAIN_SRCS  := $(wildcard client/train_main.c)
TEST_SRCS   := $(wildcard tests/test_*.c tests/testutil.c)
BENCH_SRCS  := $(wildcard bench/bench_*.c)
BENCH_SCRIPTS := $(wildcard bench/bench_*.sh)
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))
COMMON_OBJS := $(call obj,$(COMMON_SRCS)) $(patsubst $(GEN)/%.c,$(B)/obj/gen/%.o,$(PROTO_C))
LIB := $(B)/libfl.a

BINS := $(if $(SERVER_SRCS),$(B)/fl-server) $(if $(CLIENT_SRCS),$(B)/fl-client) \
        $(if $(TRAIN_SRCS),$(B)/fl-train)
TEST_BIN := $(B)/tests/fl-tests
BENCH_BINS := $(patsubst bench/bench_%.c,$(B)/bench-%,$(BENCH_SRCS))

.PHONY: all deps test bench bench-scale fuzz fuzz-corpus demo certs clean install
.DEFAULT_GOAL := all
.SECONDARY:
all: $(BINS) $(TEST_BIN) $(BENCH_BINS)

# make deps: cheap and silent when everything is there.
deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEB_PKGS) 2>/dev/null \
	    | awk '$$1=="ii"{print $$2}' | sed 's/:.*//' | sort > build.deps.tmp; \
	  for p in $(DEB_PKGS); do grep -qx "$$p" build.deps.tmp || echo $$p; done; rm -f build.deps.tmp); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing missing Debian packages:" $$missing; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "deps: run as root: apt-get install -y $$missing" >&2; exit 1; fi; \
	fi

# Any change of flags rebuilds the objects of that build directory.
$(B)/flags: FORCE | deps
	@mkdir -p $(B)
	@echo '$(CC) $(CFLAGS_ALL) $(LIBS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS_ALL) $(LIBS)' > $@
FORCE:

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto | deps
	$(call say,PROTOC,$<)
	@mkdir -p $(GEN)
	$(Q)protoc-c --proto_path=proto --c_out=$(GEN) $<

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
$(call obj,server/fedavg.c): CFLAGS_ALL += -O3

$(LIB): $(COMMON_OBJS)
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/fl-server: $(call obj,$(SERVER_SRCS)) $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
$(B)/fl-client: $(call obj,$(CLIENT_SRCS)) $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
$(B)/fl-train: $(call obj,$(TRAIN_SRCS)) $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS)
$(B)/bench-%: $(B)/obj/bench/bench_%.o $(LIB)
	$(call say,LINK,$@)
	$(Q)$(CC) -o $@ $(filter-out $(LIB),$^) $(LIB) $(LDLIBS) $(LIBS)
# The aggregation benchmark times the server's strategy itself.
$(B)/bench-aggregate: $(B)/obj/server/fedavg.o
$(B)/obj/bench/bench_aggregate.o $(B)/obj/tests/test_strategy.o: CFLAGS_ALL += -Iserver

# All tests link into one Criterion binary: one summary line closes the run.
$(TEST_BIN): $(call obj,$(TEST_SRCS)) $(B)/obj/server/fedavg.o $(LIB)
	$(call say,LINK,$@)
	@mkdir -p $(dir $@)
	$(Q)$(CC) -o $@ $^ $(LDLIBS) $(LIBS) $(shell pkg-config --libs criterion 2>/dev/null || echo -lcriterion)

# Integration tests find the binaries and test certificates through the environment.
# tests/test_scale.c connects 1000 clients (certificates in scale-certs), under the
# sanitizers too (the whole suite then took 93 s on 2 cores); SCALE_TEST_CLIENTS=N runs
# it with fewer, should a slower machine need that.
SCALE_CLIENTS := 1000
SCALE_TEST_CLIENTS ?=
TEST_ENV = FL_BIN_DIR=$(CURDIR)/$(B) FL_SRC_DIR=$(CURDIR) FL_CERTS=$(CURDIR)/$(B)/test-certs \
           FL_SCALE_CERTS=$(CURDIR)/$(B)/scale-certs \
           $(if $(SCALE_TEST_CLIENTS),FL_TEST_SCALE_CLIENTS=$(SCALE_TEST_CLIENTS)) \
           LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
TEST_CERT_CLIENTS := 24
TEST_CERTS := $(B)/test-certs/client-00$(TEST_CERT_CLIENTS).crt
test: $(BINS) $(TEST_BIN) $(TEST_CERTS) $(B)/scale-certs/ca.crt
	$(Q)$(TEST_ENV) $(TEST_BIN) $(TEST_ARGS)

$(TEST_CERTS): certs/gen.sh | deps
	$(call say,CERTS,$(B)/test-certs)
	$(Q)rm -rf $(B)/test-certs && certs/gen.sh --out $(B)/test-certs --clients $(TEST_CERT_CLIENTS) --quiet

$(B)/scale-certs/ca.crt: certs/gen.sh | deps
	$(call say,CERTS,$(B)/scale-certs)
	$(Q)rm -rf $(B)/scale-certs $(B)/scale-certs.tmp && \
	  certs/gen.sh --out $(B)/scale-certs.tmp --clients $(SCALE_CLIENTS) --quiet && \
	  mv $(B)/scale-certs.tmp $(B)/scale-certs

certs: | deps
	$(Q)certs/gen.sh --out certs/out

bench: $(BENCH_BINS) $(BINS) $(TEST_CERTS) $(B)/scale-certs/ca.crt
	$(Q)for b in $(BENCH_BINS); do echo "== $$b"; $(TEST_ENV) ./$$b || exit 1; done
	$(Q)for b in $(BENCH_SCRIPTS); do echo "== $$b"; $(TEST_ENV) ./$$b || exit 1; done

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

demo: $(BINS)
	$(Q)FL_BIN_DIR=$(CURDIR)/$(B) examples/demo.sh

install: $(BINS)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(PREFIX)/share/fl/examples
	install -m 0644 examples/*.ini $(DESTDIR)$(PREFIX)/share/fl/examples/
	install -m 0644 proto/fl.proto $(DESTDIR)$(PREFIX)/share/fl/
	install -m 0755 certs/gen.sh $(DESTDIR)$(PREFIX)/share/fl/gen-certs.sh

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
