/* impetus-inject: the sendmail-compatible way to hand a message to Impetus.
 * Reads a message on stdin, prepends the pickup envelope lines (x-sender,
 * x-receiver) and writes it into <spool>/pickup/ atomically: a temporary
 * ".inject-*.tmp" name, data made durable (fsync, or one syncfs for a group
 * of files), rename to the final name, fsync of the directory. Exit 0 only
 * after that: a producer that got 0 has handed over a durable message.
 * Bulk mode (--recipients FILE) writes one pickup file per up to --batch
 * recipients. Nothing half-written is ever left under a name the engine
 * reads: on any error the temporary files are removed.
 *
 * Exit codes (sysexits.h where one fits): 0 queued; 1 queued, but some
 * --recipients lines were invalid and skipped; 64 usage; 65 bad message or
 * no valid recipient; 66 cannot read input; 73 cannot write the spool;
 * 74 I/O error; 75 disk full (temporary; retry later). */
#include "msg.h"

#include "buf.h"
#include "inject_bs.h"
#include "conf.h"
#include "impetus_build.h"
#include "paths.h"
#include "panic.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define EXIT_PARTIAL 1
#define EX_USAGE 64
#define EX_DATAERR 65
#define EX_NOINPUT 66
#define EX_CANTCREAT 73
#define EX_IOERR 74
#define EX_TEMPFAIL 75
#define EX_OSERR 71

#define GROUP_MAX 256        /* files made durable with one sync pass */
#define DEFAULT_BATCH 100    /* recipients per pickup file in bulk mode */
#define RCPT_LINE_MAX 4096   /* named limit: one line of --recipients FILE */

static const char *prog = "impetus-inject";

IMPETUS_PRINTF(2, 3) IMPETUS_NORETURN static void die(int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

static void usage(FILE *out)
{
  fprintf(out,
          "usage: %s [-f SENDER] [-t] [-i|-oi] [-F NAME] [-c FILE | --spool DIR] [RCPT ...] < message\n"
          "       %s --recipients FILE -f SENDER [--batch N] [-c FILE | --spool DIR] < message\n"
          "       %s --count N [--batch N] -f SENDER [-c FILE | --spool DIR] RCPT... < message\n"
          "       %s -bs [-c FILE | --spool DIR]   (SMTP on stdin/stdout, as sendmail -bs)\n"
          "  -f, -r SENDER   envelope sender (\"<>\" or \"\" for the null sender)\n"
          "  -t              also take recipients from To:, Cc:, Bcc: (Bcc: is removed)\n"
          "  -i, -oi         accepted (a lone '.' never ends the message here)\n"
          "  -F NAME         full name for the From: header added when there is none\n"
          "  -c FILE         configuration to read Spoolbase / Pickup_Directory from\n"
          "  --spool DIR     spool root (pickup directory DIR/pickup)\n"
          "  --pickup DIR    the pickup directory itself\n"
          "  --recipients FILE  one address per line; blank lines and # comments skipped\n"
          "  --batch N       recipients per pickup file (default %d)\n"
          "  --count N       write N copies (benchmarks)\n"
          "  --no-header-fixup  do not add a missing Date: or Message-ID: header\n"
          "  -q, --quiet     no progress bar or summary\n",
          prog, prog, prog, prog, DEFAULT_BATCH);
}

/* ---- submission by non-root users (docs/security.md) ----
 * Installed set-group-ID impetus-submit, the one group that may write into
 * the pickup directory (1730 impetus:impetus-submit: write, no listing,
 * sticky). The group is put down at once and taken back only to read the
 * installed configuration and, once everything the user named (-c FILE,
 * --recipients FILE, stdin) has been read, to write this run's files. Those
 * are made 0640: the submitter and the group (which the engine's user is in)
 * read them; no other user can list, read, change or remove them. */
static gid_t submit_gid;
static bool setgid_run;

static void submit_init(void)
{
  submit_gid = getegid();
  setgid_run = submit_gid != getgid();
  if (setgid_run && setegid(getgid()) < 0)
    die(EX_OSERR, "cannot put down the group: %s", strerror(errno));
}

static void submit_group(bool on)
{
  if (setgid_run && setegid(on ? submit_gid : getgid()) < 0)
    die(EX_OSERR, "cannot change the effective group: %s", strerror(errno));
}

/* ---- spool location ---- */

/* Spoolbase and Pickup_Directory from the configuration at path (the
 * engine's parser, so includes, comments and relative paths behave the
 * same). Exits with a clear message when the file cannot be used. */
static char *pickup_from_conf(const char *path)
{
  struct conf_error err;
  struct conf *c = conf_load(path, &err);
  if (!c) {
    char text[5200];
    die(EX_NOINPUT, "%s", conf_error_str(&err, text, sizeof(text)));
  }
  const struct conf_view *g = conf_global(c);
  const char *pickup = conf_str(g, CONF_PICKUP_DIRECTORY);
  char *out;
  if (pickup) {
    out = util_xstrdup(pickup);
  } else {
    const char *base = conf_str(g, CONF_SPOOLBASE);
    out = util_xmalloc(strlen(base) + 8);
    sprintf(out, "%s/pickup", base);
  }
  conf_unref(c);
  return out;
}

/* ---- the message ---- */

static void read_all(int fd, struct buf *b, size_t max)
{
  for (;;) {
    buf_reserve(b, 65536);
    ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die(EX_NOINPUT, "reading the message: %s", strerror(errno));
    }
    if (n == 0)
      break;
    b->len += (size_t)n;
    if (b->len > max)
      die(EX_DATAERR, "message is larger than %zu bytes", max);
  }
}

/* Header section end: offset after the blank line (or len). */
static size_t header_end(const char *m, size_t len)
{
  size_t pos = 0;
  while (pos < len) {
    const char *nl = memchr(m + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - m) : len;
    size_t l = end - pos;
    if (l == 0 || (l == 1 && m[pos] == '\r'))
      return pos;
    pos = nl ? end + 1 : len;
  }
  return len;
}

struct rcpts {
  char **v;
  size_t n, cap;
};

static void rcpt_add(struct rcpts *r, const char *a, size_t n)
{
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 16;
    r->v = util_xrealloc(r->v, r->cap * sizeof(char *));
  }
  r->v[r->n++] = util_xstrndup(a, n);
}

/* Addresses of one RFC 5322 address-list value (unfolded). Handles
 * "Name <a@b>", bare a@b, quoted names with commas, (comments), groups. */
static void parse_address_list(const char *s, size_t n, struct rcpts *out)
{
  size_t i = 0;
  while (i < n) {
    /* One element up to a top-level ',' or ';'. */
    size_t start = i;
    int depth = 0;
    bool q = false;
    ssize_t lt = -1, gt = -1;
    for (; i < n; i++) {
      char c = s[i];
      if (q) {
        if (c == '\\' && i + 1 < n)
          i++;
        else if (c == '"')
          q = false;
      } else if (c == '"') {
        q = true;
      } else if (c == '(') {
        depth++;
      } else if (c == ')' && depth > 0) {
        depth--;
      } else if (depth == 0 && c == '<') {
        lt = (ssize_t)i;
      } else if (depth == 0 && c == '>') {
        gt = (ssize_t)i;
      } else if (depth == 0 && c == ':' && lt < 0) {
        start = i + 1; /* group name: "team: a@b, c@d;" */
      } else if (depth == 0 && (c == ',' || c == ';')) {
        break;
      }
    }
    char tmp[1024];
    size_t tl = 0;
    if (lt >= 0 && gt > lt) {
      for (ssize_t k = lt + 1; k < gt && tl < sizeof(tmp) - 1; k++)
        if (!isspace((unsigned char)s[k]))
          tmp[tl++] = s[k];
    } else {
      int d = 0;
      for (size_t k = start; k < i && tl < sizeof(tmp) - 1; k++) {
        if (s[k] == '(')
          d++;
        else if (s[k] == ')' && d > 0)
          d--;
        else if (d == 0 && !isspace((unsigned char)s[k]))
          tmp[tl++] = s[k];
      }
    }
    if (tl > 0)
      rcpt_add(out, tmp, tl);
    i++;
  }
}

static bool header_is(const char *line, size_t l, const char *name)
{
  size_t nl = strlen(name);
  return l > nl && !strncasecmp(line, name, nl) && line[nl] == ':';
}

/* -t: collect To/Cc/Bcc recipients; drop Bcc lines (with their folded
 * continuation lines) from msg. Returns whether a From: header exists. */
static bool scan_headers(struct buf *msg, struct rcpts *out, bool take)
{
  char *m = (char *)msg->data;
  size_t hend = header_end(m, msg->len), pos = 0, w = 0;
  bool has_from = false, dropping = false;
  struct buf val = {0};
  int collecting = 0;
  while (pos < hend) {
    const char *nl = memchr(m + pos, '\n', hend - pos);
    size_t next = nl ? (size_t)(nl - m) + 1 : hend;
    size_t l = next - pos;
    const char *line = m + pos;
    bool cont = line[0] == ' ' || line[0] == '\t';
    if (!cont) {
      if (collecting && val.len)
        parse_address_list((const char *)val.data, val.len, out);
      val.len = 0;
      collecting = 0;
      dropping = false;
      if (header_is(line, l, "From"))
        has_from = true;
      if (take && (header_is(line, l, "To") || header_is(line, l, "Cc") ||
                   header_is(line, l, "Bcc"))) {
        collecting = 1;
        const char *colon = memchr(line, ':', l);
        buf_append(&val, colon + 1, l - (size_t)(colon + 1 - line));
      }
      if (take && header_is(line, l, "Bcc"))
        dropping = true;
    } else if (collecting) {
      buf_append(&val, line, l);
    }
    for (size_t k = 0; k < val.len; k++)
      if (val.data[k] == '\r' || val.data[k] == '\n')
        val.data[k] = ' ';
    if (!dropping) {
      memmove(m + w, line, l);
      w += l;
    }
    pos = next;
  }
  if (collecting && val.len)
    parse_address_list((const char *)val.data, val.len, out);
  buf_done(&val, 0);
  memmove(m + w, m + hend, msg->len - hend);
  msg->len -= hend - w;
  return has_from;
}

/* ---- writing pickup files ---- */

struct writer {
  int dirfd;
  const char *dir;
  unsigned long serial;
  char tmp[GROUP_MAX][80];
  char fin[GROUP_MAX][80];
  size_t n;          /* temporary files waiting for the group commit */
  size_t files_done; /* renamed into place and synced */
  bool unlisted;     /* the directory is write-only to us: no syncfs, no fsync of it */
  struct buf b;
};

static void writer_abort(struct writer *w)
{
  for (size_t i = 0; i < w->n; i++)
    unlinkat(w->dirfd, w->tmp[i], 0);
  w->n = 0;
}

static int err_code(int e)
{
  return e == ENOSPC || e == EDQUOT ? EX_TEMPFAIL : e == EACCES || e == EROFS ? EX_CANTCREAT
                                                                               : EX_IOERR;
}

IMPETUS_NORETURN static void writer_die(struct writer *w, int e, const char *what)
{
  writer_abort(w);
  if (w->files_done && !w->unlisted)
    (void)fsync(w->dirfd);
  die(err_code(e), "%s in %s: %s%s (%zu pickup files were queued before the error; no "
                   "partial file is left)",
      what, w->dir, strerror(e), e == ENOSPC || e == EDQUOT ? " (disk full)" : "",
      w->files_done);
}

/* Make the waiting files durable, rename them into place, sync the directory. */
static void writer_flush(struct writer *w)
{
  if (w->n == 0)
    return;
  if (w->unlisted) {
    /* each file was synced before its close */
  } else if (w->n == 1) {
    int fd = openat(w->dirfd, w->tmp[0], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
      writer_die(w, errno, "fsync");
    close(fd);
  } else if (syncfs(w->dirfd) < 0) {
    writer_die(w, errno, "syncfs");
  }
  for (size_t i = 0; i < w->n; i++) {
    if (renameat(w->dirfd, w->tmp[i], w->dirfd, w->fin[i]) < 0) {
      int e = errno;
      memmove(w->tmp, w->tmp + i, (w->n - i) * sizeof(w->tmp[0]));
      w->n -= i;
      writer_die(w, e, "rename");
    }
    w->files_done++;
  }
  w->n = 0;
  if (!w->unlisted && fsync(w->dirfd) < 0)
    writer_die(w, errno, "fsync of the directory");
}

static void writer_put(struct writer *w, const char *sender, char **rc, size_t nrc,
                       const struct buf *msg)
{
  struct buf *b = &w->b;
  b->len = b->off = 0;
  msg_envelope_write(b, sender, rc, nrc);
  size_t i = w->n;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  snprintf(w->tmp[i], sizeof(w->tmp[i]), ".inject-%ld-%lu.tmp", (long)getpid(), w->serial);
  snprintf(w->fin[i], sizeof(w->fin[i]), "%" PRIu64 ".%06ld-%ld-%lu", (uint64_t)tv.tv_sec,
           (long)tv.tv_usec, (long)getpid(), w->serial);
  w->serial++;
  int fd = openat(w->dirfd, w->tmp[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    writer_die(w, errno, "create");
  /* set-group-ID: the file's group is the submit group; let it read */
  if (setgid_run && fchmod(fd, 0640) < 0) {
    int e = errno;
    close(fd);
    writer_die(w, e, "chmod");
  }
  /* Run as root, hand the file to the pickup directory's owner: the engine
   * leaves root (User/Group) and must be able to read what it claims. */
  struct stat dst;
  if (geteuid() == 0 && fstat(w->dirfd, &dst) == 0 && dst.st_uid != 0 &&
      fchown(fd, dst.st_uid, dst.st_gid) < 0) {
    int e = errno;
    close(fd);
    writer_die(w, e, "chown to the pickup directory's owner");
  }
  w->n++;
  struct part {
    const void *p;
    size_t n;
  } parts[2] = {{b->data, b->len}, {msg->data, msg->len}};
  for (int k = 0; k < 2; k++) {
    const uint8_t *p = parts[k].p;
    size_t n = parts[k].n;
    while (n) {
      ssize_t r = write(fd, p, n);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0) {
        int e = r < 0 ? errno : EIO;
        close(fd);
        writer_die(w, e, "write");
      }
      p += r;
      n -= (size_t)r;
    }
  }
  if (w->unlisted && fsync(fd) < 0) {
    int e = errno;
    close(fd);
    writer_die(w, e, "fsync");
  }
  if (close(fd) < 0)
    writer_die(w, errno, "close");
  if (w->n == GROUP_MAX)
    writer_flush(w);
}

/* ---- progress ---- */

static void progress(bool tty, size_t done, size_t total)
{
  if (!tty)
    return;
  int width = 40, fill = total ? (int)((double)done / (double)total * width) : width;
  fprintf(stderr, "\r[%.*s%*s] %zu/%zu recipients", fill,
          "########################################", width - fill, "", done, total);
  fflush(stderr);
}

/* ---- main ---- */

static const char *default_sender(void)
{
  static char s[MSG_ADDR_MAX + 1];
  struct passwd *pw = getpwuid(getuid());
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  snprintf(s, sizeof(s), "%s@%s", pw ? pw->pw_name : "root", host);
  return s;
}

static char *strip_angles(const char *a)
{
  size_t n = strlen(a);
  if (n >= 2 && a[0] == '<' && a[n - 1] == '>')
    return util_xstrndup(a + 1, n - 2);
  return util_xstrdup(a);
}

int main(int argc, char **argv)
{
  const char *sender = NULL, *fullname = NULL, *config = NULL, *spool = NULL, *pickup = NULL;
  const char *rfile = NULL;
  bool take_headers = false, quiet = false, fixup = true, smtp_bs = false;
  unsigned long batch = DEFAULT_BATCH, count = 1;
  struct rcpts rc = {0};
  int i;
  submit_init(); /* before anything is read */
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (usage(stderr), exit(EX_USAGE), ""))
    if (!strcmp(a, "--")) {
      i++;
      break;
    } else if (!strcmp(a, "-f") || !strcmp(a, "-r")) {
      sender = NEXT();
    } else if ((!strncmp(a, "-f", 2) || !strncmp(a, "-r", 2)) && a[2]) {
      sender = a + 2;
    } else if (!strcmp(a, "-F")) {
      fullname = NEXT();
    } else if (!strncmp(a, "-F", 2) && a[2]) {
      fullname = a + 2;
    } else if (!strcmp(a, "-bs")) {
      smtp_bs = true;
    } else if (!strcmp(a, "-t")) {
      take_headers = true;
    } else if (!strcmp(a, "-i") || !strcmp(a, "-oi") || !strcmp(a, "-bm") ||
               !strncmp(a, "-od", 3) || !strncmp(a, "-oe", 3) || !strcmp(a, "-om") ||
               !strcmp(a, "-v")) {
      /* accepted for compatibility; no effect */
    } else if (!strcmp(a, "-B") || !strcmp(a, "-N") || !strcmp(a, "-R") || !strcmp(a, "-V")) {
      (void)NEXT(); /* sendmail options with an argument we do not use */
    } else if (!strcmp(a, "-c") || !strcmp(a, "-C")) {
      config = NEXT();
    } else if (!strcmp(a, "--spool")) {
      spool = NEXT();
    } else if (!strcmp(a, "--pickup")) {
      pickup = NEXT();
    } else if (!strcmp(a, "--recipients")) {
      rfile = NEXT();
    } else if (!strcmp(a, "--batch")) {
      batch = strtoul(NEXT(), NULL, 10);
      if (batch == 0 || batch > MSG_RCPTS_MAX)
        die(EX_USAGE, "--batch must be 1..%u", MSG_RCPTS_MAX);
    } else if (!strcmp(a, "--count")) {
      count = strtoul(NEXT(), NULL, 10);
      if (count == 0)
        die(EX_USAGE, "--count must be at least 1");
    } else if (!strcmp(a, "--no-header-fixup")) {
      fixup = false;
    } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
      quiet = true;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--version")) {
      printf("impetus-inject %s\n", IMPETUS_VERSION);
      return 0;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "%s: unsupported option %s\n", prog, a);
      usage(stderr);
      return EX_USAGE;
    } else {
      break;
    }
#undef NEXT
  }
  int bad_args = 0;
  for (; i < argc; i++) {
    /* sendmail accepts "a@b, c@d" in one argument */
    struct rcpts tmp = {0};
    parse_address_list(argv[i], strlen(argv[i]), &tmp);
    for (size_t k = 0; k < tmp.n; k++) {
      const char *why = msg_addr_check(tmp.v[k], strlen(tmp.v[k]));
      if (why) {
        fprintf(stderr, "%s: bad recipient \"%s\": %s\n", prog, tmp.v[k], why);
        bad_args++;
      }
      rcpt_add(&rc, tmp.v[k], strlen(tmp.v[k]));
      free(tmp.v[k]);
    }
    free(tmp.v);
  }
  if (bad_args) {
    for (size_t k = 0; k < rc.n; k++)
      free(rc.v[k]);
    free(rc.v);
    return EX_DATAERR;
  }

  /* Where to write. */
  char *pickup_dir = NULL;
  if (pickup) {
    pickup_dir = util_xstrdup(pickup);
  } else if (spool) {
    pickup_dir = util_xmalloc(strlen(spool) + 8);
    sprintf(pickup_dir, "%s/pickup", spool);
  } else {
    /* the installed configuration may be readable by the submit group only;
     * a file the user names is read with the user's own groups */
    submit_group(config == NULL);
    pickup_dir = pickup_from_conf(config ? config : paths_config());
    submit_group(false);
  }
  if (smtp_bs) {
    int code = inject_bs(pickup_dir); /* tools/inject/inject_bs.c */
    free(pickup_dir);
    return code;
  }

  /* The sender. */
  char *from = strip_angles(sender ? sender : default_sender());
  if (from[0]) {
    const char *why = msg_addr_check(from, strlen(from));
    if (why)
      die(EX_DATAERR, "bad sender \"%s\": %s", from, why);
  }

  /* The message. */
  struct buf msg = {0};
  read_all(0, &msg, MSG_DEFAULT_MAX_SIZE);
  size_t cmdline_rcpts = rc.n;
  bool has_from = scan_headers(&msg, &rc, take_headers);
  for (size_t k = cmdline_rcpts; k < rc.n; k++) {
    const char *why = msg_addr_check(rc.v[k], strlen(rc.v[k]));
    if (why)
      die(EX_DATAERR, "bad recipient \"%s\" in the message headers: %s", rc.v[k], why);
  }
  /* Header fix-ups, as Postfix's cleanup makes them for local submission:
   * a missing From:, Date: and Message-ID: are added (the ones present are
   * kept). --no-header-fixup leaves Date: and Message-ID: alone. */
  unsigned missing = fixup ? msg_headers_missing((const char *)msg.data, msg.len) : 0;
  if ((!has_from && from[0]) || missing) {
    struct buf hdr = {0};
    if (!has_from && from[0]) {
      if (fullname)
        buf_printf(&hdr, "From: \"%s\" <%s>\n", fullname, from);
      else
        buf_printf(&hdr, "From: <%s>\n", from);
    }
    if (missing) {
      char host[256] = "localhost", unique[96];
      const char *at = strrchr(from, '@');
      if (at && at[1] && at[1] != '[')
        snprintf(host, sizeof(host), "%s", at + 1);
      else
        (void)gethostname(host, sizeof(host) - 1);
      struct timeval tv;
      gettimeofday(&tv, NULL);
      snprintf(unique, sizeof(unique), "%" PRIu64 ".%06ld.%ld", (uint64_t)tv.tv_sec,
               (long)tv.tv_usec, (long)getpid()); /* one process, one message */
      msg_headers_add(&hdr, missing, tv.tv_sec, unique, host);
    }
    buf_append(&hdr, msg.data, msg.len);
    buf_done(&msg, 0);
    msg = hdr;
  }

  /* Bulk recipients. */
  size_t invalid = 0;
  if (rfile) {
    FILE *f = strcmp(rfile, "-") ? fopen(rfile, "r") : NULL;
    if (!f)
      die(EX_NOINPUT, "%s: %s", rfile, strerror(errno));
    char line[RCPT_LINE_MAX];
    unsigned long lineno = 0;
    while (fgets(line, sizeof(line), f)) {
      lineno++;
      size_t l = strlen(line);
      if (l == sizeof(line) - 1 && line[l - 1] != '\n') {
        fprintf(stderr, "%s:%lu: line longer than %d bytes, skipped\n", rfile, lineno,
                RCPT_LINE_MAX);
        int c;
        while ((c = fgetc(f)) != EOF && c != '\n') {
        }
        invalid++;
        continue;
      }
      char *p = line;
      while (isspace((unsigned char)*p))
        p++;
      l = strlen(p);
      while (l && isspace((unsigned char)p[l - 1]))
        p[--l] = 0;
      if (l == 0 || p[0] == '#')
        continue;
      char *a = strip_angles(p);
      const char *why = msg_addr_check(a, strlen(a));
      if (why) {
        fprintf(stderr, "%s:%lu: bad address \"%s\": %s, skipped\n", rfile, lineno, a, why);
        invalid++;
      } else {
        rcpt_add(&rc, a, strlen(a));
      }
      free(a);
    }
    fclose(f);
  }
  if (rc.n == 0)
    die(EX_DATAERR, "no recipients%s", invalid ? " (every line was invalid)" : "");

  /* Check the result the way the engine will, once, before writing. */
  {
    struct buf probe = {0};
    buf_printf(&probe, "x-sender: <%s>\nx-receiver: <%s>\n", from, rc.v[0]);
    buf_append(&probe, msg.data, msg.len);
    struct msg_envelope env;
    char why[256];
    int r = msg_parse((const char *)probe.data, probe.len, &env, why, sizeof(why));
    msg_envelope_done(&env);
    buf_done(&probe, 0);
    if (r < 0)
      die(EX_DATAERR, "the engine would reject this message: %s", why);
  }

  struct writer *w = util_xcalloc(1, sizeof(*w));
  w->dir = pickup_dir;
  submit_group(true); /* from here on only this run's files are touched */
  w->dirfd = open(pickup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (w->dirfd < 0 && errno == EACCES) {
    /* a submission directory we may write but not read: each file is
     * synced itself, the directory cannot be */
    w->dirfd = open(pickup_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    w->unlisted = true;
  }
  if (w->dirfd < 0)
    die(errno == ENOENT || errno == EACCES ? EX_CANTCREAT : EX_IOERR,
        "pickup directory %s: %s", pickup_dir, strerror(errno));
  bool tty = !quiet && isatty(2) && (rfile || count > 1);
  size_t total = rc.n * count, done = 0;
  for (unsigned long c = 0; c < count; c++) {
    size_t per = rfile || count > 1 ? batch : rc.n;
    if (per < 1)
      per = 1;
    for (size_t k = 0; k < rc.n; k += per) {
      size_t n = rc.n - k < per ? rc.n - k : per;
      writer_put(w, from, rc.v + k, n, &msg);
      done += n;
      if (w->serial % 64 == 0)
        progress(tty, done, total);
    }
  }
  writer_flush(w);
  progress(tty, done, total);
  if (tty)
    fputc('\n', stderr);
  if (!quiet && (rfile || count > 1))
    fprintf(stderr, "%s: queued %zu recipients in %zu pickup files, %zu invalid lines skipped\n",
            prog, done, w->files_done, invalid);
  close(w->dirfd);
  buf_done(&w->b, 0);
  free(w);
  for (size_t k = 0; k < rc.n; k++)
    free(rc.v[k]);
  free(rc.v);
  buf_done(&msg, 0);
  free(from);
  free(pickup_dir);
  return invalid ? EXIT_PARTIAL : 0;
}
