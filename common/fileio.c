/* Whole-file reads and atomic writes (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

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

static int write_pieces(const char *path, const fl_piece *pieces, size_t n, mode_t mode,
                        char *err, size_t errlen);

int fl_file_write_atomic(const char *path, const void *buf, size_t len, char *err,
                         size_t errlen) {
  fl_piece one = {buf, len};
  return write_pieces(path, &one, 1, 0644, err, errlen);
}

int fl_file_write_private(const char *path, const void *buf, size_t len, char *err,
                          size_t errlen) {
  fl_piece one = {buf, len};
  return write_pieces(path, &one, 1, 0600, err, errlen);
}

int fl_file_write_atomic_pieces(const char *path, const fl_piece *pieces, size_t n, char *err,
                                size_t errlen) {
  return write_pieces(path, pieces, n, 0644, err, errlen);
}

/* mkostemp makes the temporary file 0600: a private file is never readable by others,
 * not even for a moment. */
static int write_pieces(const char *path, const fl_piece *pieces, size_t n, mode_t mode,
                        char *err, size_t errlen) {
  int rc = 0, fd = -1;
  char *tmp = malloc(strlen(path) + 16);
  if (!tmp) return fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory", path);
  sprintf(tmp, "%s.tmp.XXXXXX", path);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = fl_errf(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO,
              "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    goto done;
  }
  int bad = fchmod(fd, mode) != 0;
  for (size_t i = 0; i < n && !bad; i++) bad = write_all(fd, pieces[i].data, pieces[i].len) != 0;
  if (bad || fsync(fd) != 0) {
    rc = fl_errf(err, errlen, FL_EIO, "%s: cannot write %s: %s", path, tmp, strerror(errno));
    goto unlink;
  }
  int c = close(fd);
  fd = -1;
  if (c != 0 || rename(tmp, path) != 0) {
    rc = fl_errf(err, errlen, FL_EIO, "%s: cannot write: %s", path, strerror(errno));
    goto unlink;
  }
  if (sync_dir(path) != 0)
    rc = fl_errf(err, errlen, FL_EIO, "%s: written, but syncing its directory failed: %s", path,
              strerror(errno));
  goto done;
unlink:
  if (fd >= 0) close(fd);
  unlink(tmp);
done:
  free(tmp);
  return rc;
}

int fl_file_read(const char *path, uint8_t **out, size_t *len, char *err, size_t errlen) {
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fl_errf(err, errlen, errno == ENOENT ? FL_ENOENT : FL_EIO, "%s: cannot open: %s", path,
                strerror(errno));
  struct stat st;
  uint8_t *buf = NULL;
  int rc = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = fl_errf(err, errlen, FL_EIO, "%s: cannot read: %s", path,
              S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    goto done;
  }
  size_t size = (size_t)st.st_size, got = 0;
  buf = malloc(size ? size : 1);
  if (!buf) {
    rc = fl_errf(err, errlen, FL_ENOMEM, "%s: out of memory for %zu bytes", path, size);
    goto done;
  }
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = fl_errf(err, errlen, FL_EIO, "%s: cannot read: %s", path, strerror(errno));
      goto done;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  *out = buf;
  *len = got;
  buf = NULL;
done:
  close(fd);
  free(buf);
  return rc;
}
