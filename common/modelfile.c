/* Model files (format in modelfile.h).  The file is built in memory, then written to a
 * temporary file in the same directory, synced and renamed over the target, so a reader
 * sees either the old file or the new one, never a half-written one. */
#include "modelfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"

#define MAGIC "FLMODEL\0"
#define MAGIC_LEN 8
/* magic, version, spec length | model id, parameter count | CRC */
#define HEAD_LEN (MAGIC_LEN + 4 + 4)
#define MID_LEN 16
#define TAIL_LEN 4

static int fail_msg(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_msg(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The rename is durable only once the directory itself is synced. */
static int sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return -1;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

int fl_modelfile_save(const char *path, const char *spec, uint64_t model_id,
                      const float *params, size_t num_params, char *err, size_t errlen) {
  size_t spec_len = strlen(spec);
  if (spec_len > UINT32_MAX)
    return fail_msg(err, errlen, FL_EINVAL, "%s: model spec of %zu bytes is too long", path,
                    spec_len);
  size_t fixed = HEAD_LEN + MID_LEN + TAIL_LEN + spec_len;
  if (num_params > (SIZE_MAX - fixed) / 4)
    return fail_msg(err, errlen, FL_EINVAL, "%s: %zu parameters is too many", path,
                    num_params);
  size_t size = fixed + 4 * num_params;
  uint8_t *buf = malloc(size);
  if (!buf) return fail_msg(err, errlen, FL_ENOMEM, "%s: out of memory", path);
  uint8_t *p = buf;
  memcpy(p, MAGIC, MAGIC_LEN);
  put32(p + MAGIC_LEN, FL_MODELFILE_VERSION);
  put32(p + MAGIC_LEN + 4, (uint32_t)spec_len);
  p += HEAD_LEN;
  memcpy(p, spec, spec_len);
  p += spec_len;
  put64(p, model_id);
  put64(p + 8, num_params);
  p += MID_LEN;
  for (size_t i = 0; i < num_params; i++, p += 4) {
    uint32_t bits;
    memcpy(&bits, &params[i], 4);
    put32(p, bits);
  }
  put32(p, (uint32_t)crc32_z(0, buf, size - TAIL_LEN));

  int rc = 0, fd = -1;
  char *tmp = malloc(strlen(path) + 16);
  if (!tmp) {
    rc = fail_msg(err, errlen, FL_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  sprintf(tmp, "%s.tmp.XXXXXX", path);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = fail_msg(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO,
                  "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    goto done;
  }
  if (fchmod(fd, 0644) != 0 || write_all(fd, buf, size) != 0 || fsync(fd) != 0) {
    rc = fail_msg(err, errlen, FL_EIO, "%s: cannot write %s: %s", path, tmp, strerror(errno));
    goto unlink;
  }
  int c = close(fd);
  fd = -1;
  if (c != 0 || rename(tmp, path) != 0) {
    rc = fail_msg(err, errlen, FL_EIO, "%s: cannot write: %s", path, strerror(errno));
    goto unlink;
  }
  if (sync_dir(path) != 0)
    rc = fail_msg(err, errlen, FL_EIO, "%s: written, but syncing its directory failed: %s",
                  path, strerror(errno));
  goto done;
unlink:
  if (fd >= 0) close(fd);
  unlink(tmp);
done:
  free(tmp);
  free(buf);
  return rc;
}

/* Checks a whole file image; on success fills the outputs (malloc'd). */
static int parse(const uint8_t *b, size_t size, const char *path, char **spec,
                 uint64_t *model_id, float **params, size_t *num_params, char *err,
                 size_t errlen) {
  if (size < MAGIC_LEN || memcmp(b, MAGIC, MAGIC_LEN) != 0)
    return fail_msg(err, errlen, FL_EFORMAT, "%s: not an fl model file (bad magic)", path);
  if (size < HEAD_LEN + MID_LEN + TAIL_LEN)
    return fail_msg(err, errlen, FL_ETRUNC,
                    "%s: truncated: %zu bytes, a model file has at least %d", path, size,
                    HEAD_LEN + MID_LEN + TAIL_LEN);
  uint32_t version = get32(b + MAGIC_LEN);
  if (version != FL_MODELFILE_VERSION)
    return fail_msg(err, errlen, FL_EVERSION,
                    "%s: model file format version %u; this build reads version %u", path,
                    version, FL_MODELFILE_VERSION);
  size_t spec_len = get32(b + MAGIC_LEN + 4);
  uint64_t count = 0;
  /* The length the header declares, or 0 if it cannot be computed from what is there. */
  size_t declared = 0;
  if (spec_len <= size - (HEAD_LEN + MID_LEN + TAIL_LEN)) {
    count = get64(b + HEAD_LEN + spec_len + 8);
    size_t fixed = HEAD_LEN + MID_LEN + TAIL_LEN + spec_len;
    if (count <= (SIZE_MAX - fixed) / 4) declared = fixed + 4 * (size_t)count;
  }
  uint32_t stored = get32(b + size - TAIL_LEN);
  uint32_t actual = (uint32_t)crc32_z(0, b, size - TAIL_LEN);
  if (stored != actual) {
    if (declared == 0 || declared > size)
      return fail_msg(err, errlen, FL_ETRUNC,
                      "%s: truncated or corrupt: the header declares a %u-byte spec and "
                      "%llu parameters, more than the file's %zu bytes hold", path,
                      (unsigned)spec_len, (unsigned long long)count, size);
    return fail_msg(err, errlen, FL_ECHECKSUM,
                    "%s: corrupt: CRC-32 mismatch (stored %08x, computed %08x)", path, stored,
                    actual);
  }
  if (declared != size)
    return fail_msg(err, errlen, FL_EFORMAT,
                    "%s: parameter count %llu inconsistent with the file length %zu bytes",
                    path, (unsigned long long)count, size);
  if (memchr(b + HEAD_LEN, 0, spec_len))
    return fail_msg(err, errlen, FL_EFORMAT, "%s: model spec contains a NUL byte", path);

  char *s = malloc(spec_len + 1);
  float *w = malloc(count ? (size_t)count * sizeof *w : 1);
  if (!s || !w) {
    free(s);
    free(w);
    return fail_msg(err, errlen, FL_ENOMEM, "%s: out of memory", path);
  }
  memcpy(s, b + HEAD_LEN, spec_len);
  s[spec_len] = 0;
  const uint8_t *p = b + HEAD_LEN + spec_len + MID_LEN;
  for (size_t i = 0; i < count; i++, p += 4) {
    uint32_t bits = get32(p);
    memcpy(&w[i], &bits, 4);
  }
  *spec = s;
  *model_id = get64(b + HEAD_LEN + spec_len);
  *params = w;
  *num_params = (size_t)count;
  return 0;
}

int fl_modelfile_load(const char *path, char **spec, uint64_t *model_id, float **params,
                      size_t *num_params, char *err, size_t errlen) {
  *spec = NULL;
  *params = NULL;
  *num_params = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail_msg(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO, "%s: cannot open: %s",
                    path, strerror(errno));
  struct stat st;
  uint8_t *buf = NULL;
  int rc;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = fail_msg(err, errlen, FL_EIO, "%s: cannot read: %s", path,
                  S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    goto done;
  }
  size_t size = (size_t)st.st_size, got = 0;
  buf = malloc(size ? size : 1);
  if (!buf) {
    rc = fail_msg(err, errlen, FL_ENOMEM, "%s: out of memory for %zu bytes", path, size);
    goto done;
  }
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = fail_msg(err, errlen, FL_EIO, "%s: cannot read: %s", path, strerror(errno));
      goto done;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  rc = parse(buf, got, path, spec, model_id, params, num_params, err, errlen);
done:
  close(fd);
  free(buf);
  return rc;
}
