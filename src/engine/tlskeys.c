/* tlskeys.c owns the TLS client certificate and key files read at
 * start-up, before the drop to User (see engine.c, docs/security.md).
 * It never logs (the caller does) and never writes the files' contents
 * anywhere but secmem. The table is filled by the main thread before any
 * worker starts and is read-only until tlskeys_free, after they stopped. */
#include "tlskeys.h"

#include "conf.h"
#include "panic.h"
#include "secmem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TLSKEYS_MAX 64               /* distinct files */
#define TLSKEYS_FILE_MAX (1u << 20)  /* a PEM chain or key larger than 1 MiB is not one */

struct kfile {
  char *path; /* malloc */
  char *data; /* secmem, NUL-terminated */
  size_t len;
};

static struct kfile files[TLSKEYS_MAX];
static size_t nfiles;

struct walk {
  void (*bad)(void *, const char *, const char *);
  void *arg;
  int n;
};

/* Read path whole into secmem. 0, or -errno. */
static int read_whole(const char *path, char **out, size_t *len)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  int e = 0;
  if (fstat(fd, &st) < 0)
    e = errno;
  else if (!S_ISREG(st.st_mode))
    e = EINVAL;
  else if (st.st_size > (off_t)TLSKEYS_FILE_MAX)
    e = EFBIG;
  if (e) {
    close(fd);
    return -e;
  }
  char *d = secmem_xalloc((size_t)st.st_size + 1);
  size_t n = 0;
  while (n < (size_t)st.st_size) {
    ssize_t r = read(fd, d + n, (size_t)st.st_size - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      int re = r < 0 ? errno : EIO;
      close(fd);
      secmem_free(d);
      return -re;
    }
    n += (size_t)r;
  }
  close(fd);
  d[n] = 0;
  *out = d;
  *len = n;
  return 0;
}

static void add(void *arg, const char *path)
{
  struct walk *w = arg;
  if (path == NULL || *path == 0 || !strcmp(path, "none"))
    return;
  for (size_t i = 0; i < nfiles; i++)
    if (!strcmp(files[i].path, path))
      return;
  if (nfiles == TLSKEYS_MAX) {
    w->bad(w->arg, path, "more than 64 distinct TLS files: read when first used");
    return;
  }
  char *d = NULL;
  size_t len = 0;
  int r = read_whole(path, &d, &len);
  if (r < 0) {
    w->bad(w->arg, path, strerror(-r));
    return;
  }
  files[nfiles].path = util_xstrdup(path);
  files[nfiles].data = d;
  files[nfiles].len = len;
  nfiles++;
  w->n++;
}

int tlskeys_preload(struct conf *c, void (*bad)(void *, const char *, const char *), void *arg)
{
  struct walk w = {.bad = bad, .arg = arg};
  conf_each_set(c, CONF_TLS_CERTIFICATE, add, &w);
  conf_each_set(c, CONF_TLS_KEY, add, &w);
  return w.n;
}

const char *tlskeys_get(const char *path, size_t *len)
{
  if (path == NULL)
    return NULL;
  for (size_t i = 0; i < nfiles; i++)
    if (!strcmp(files[i].path, path)) {
      *len = files[i].len;
      return files[i].data;
    }
  return NULL;
}

void tlskeys_free(void)
{
  for (size_t i = 0; i < nfiles; i++) {
    free(files[i].path);
    secmem_free(files[i].data);
  }
  memset(files, 0, sizeof files);
  nfiles = 0;
}
