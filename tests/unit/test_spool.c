/* Unit tests for the spool: the pickup parser and address checks, every
 * bad input of issue 3 (to bad/ with a .why, others unaffected), metadata
 * round trips, checksum damage, recovery with partial delivery, ids across
 * restarts, file modes, and both Keep_Message_Dicts_In_Memory paths.
 * Works in a temporary directory under /tmp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "spool.h"
#include "spool_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/io_uring.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- parser ---- */

/* The value of x-context key in env (the last line wins), or NULL. */
static const char *env_get(const struct msg_envelope *env, const char *key)
{
  const char *v = NULL;
  for (uint32_t i = 0; i < env->nctx; i++)
    if (!strcmp(env->ctx[i].key, key))
      v = env->ctx[i].value;
  return v;
}


static int parse(const char *s, char *why)
{
  struct msg_envelope env;
  int r = msg_parse(s, strlen(s), &env, why, 256);
  msg_envelope_done(&env);
  return r;
}

static void test_parse_good(void **state)
{
  (void)state;
  const char *f = "X-Sender: <a@example.com>\r\n"
                  "x-RECEIVER: <b@example.org>\r\n"
                  "x-receiver: c@[192.0.2.1]\r\n"
                  "x-binding: b1\r\n"
                  "X-Binding-Group: g1\r\n"
                  "x-context: outbound_smtp_auth_user = bob\r\n"
                  "x-context: k=a=b\r\n"
                  "Subject: hi\r\n"
                  " folded\r\n"
                  "\r\n"
                  "body \xc3\xa9\r\n";
  struct msg_envelope env;
  char why[256] = "";
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof(why)), 0);
  assert_string_equal(env.sender, "a@example.com");
  assert_int_equal(env.nrcpt, 2);
  assert_string_equal(env.rcpt[0], "b@example.org");
  assert_string_equal(env.rcpt[1], "c@[192.0.2.1]");
  assert_string_equal(env.binding, "b1");
  assert_string_equal(env.binding_group, "g1");
  assert_string_equal(env_get(&env, "outbound_smtp_auth_user"), "bob");
  assert_string_equal(env_get(&env, "k"), "a=b");
  assert_memory_equal(f + env.body_off, "Subject: hi", 11);
  assert_int_equal(env.body_off + env.body_size, strlen(f));
  assert_true(env.flags & SPOOL_MSG_F_8BIT);
  msg_envelope_done(&env);
  /* Null sender, LF line ends, no headers at all. */
  const char *g = "x-sender: <>\nx-receiver: <postmaster@example.com>\n\nhello\n";
  assert_int_equal(msg_parse(g, strlen(g), &env, why, sizeof(why)), 0);
  assert_string_equal(env.sender, "");
  assert_false(env.flags & SPOOL_MSG_F_8BIT);
  msg_envelope_done(&env);
}

/* The 8-bit flag wherever the one high byte of a long body is: in the
 * word-at-a-time scan, at its block edges, and in the byte-wise tail. */
static void test_parse_8bit(void **state)
{
  (void)state;
  const char *head = "x-sender: <a@b.example>\nx-receiver: <c@d.example>\nSubject: s\n\n";
  size_t hl = strlen(head), bl = 998; /* one body line at the limit */
  char *f = malloc(hl + bl + 1);
  struct msg_envelope env;
  char why[256];
  for (size_t at = 0; at <= bl; at++) {
    memcpy(f, head, hl);
    memset(f + hl, 'x', bl);
    f[hl + bl] = 0;
    if (at < bl)
      f[hl + at] = (char)(at % 2 ? 0x80 : 0xff);
    assert_int_equal(msg_parse(f, hl + bl, &env, why, sizeof(why)), 0);
    assert_int_equal(!!(env.flags & SPOOL_MSG_F_8BIT), at < bl);
    msg_envelope_done(&env);
  }
  free(f);
}

/* x-context passwords are overwritten in place; the envelope still parses. */
static void test_scrub_secrets(void **state)
{
  (void)state;
  char f[] = "x-sender: <a@b.example>\r\n"
             "x-context: outbound_smtp_auth_pass = Sekr1t pw\r\n"
             "x-receiver: <c@d.example>\n"
             "X-Context: tenant=t1\n"
             "x-context:outbound_smtp_auth_pass=\n"
             "Subject: hi\n\nbody x-context: outbound_smtp_auth_pass=keep\n";
  struct msg_envelope env;
  char why[256];
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof(why)), 0);
  uint64_t body_off = env.body_off;
  msg_envelope_done(&env);
  size_t lo, hi;
  /* one line: the empty value has nothing to hide, the body is not envelope */
  assert_int_equal(msg_scrub_secrets(f, body_off, ctx_key_is_secret, &lo, &hi), 1);
  assert_null(strstr(f, "Sekr1t"));
  /* "outbound_smtp_auth_pass = Sekr1t pw": 35 bytes -> "_=" and 33 stars */
  char stars[34];
  memset(stars, '*', 33);
  stars[33] = 0;
  char want[64];
  snprintf(want, sizeof want, "x-context: _=%s\r\n", stars);
  assert_non_null(strstr(f, want));
  assert_true(lo > 0 && hi > lo && hi <= body_off);
  assert_non_null(strstr(f, "tenant=t1"));
  assert_non_null(strstr(f, "pass=keep"));
  assert_int_equal(msg_parse(f, strlen(f), &env, why, sizeof(why)), 0);
  assert_int_equal(env.body_off, body_off);
  assert_string_equal(env_get(&env, "_"), stars);
  assert_string_equal(env_get(&env, "tenant"), "t1");
  assert_string_equal(env_get(&env, "outbound_smtp_auth_pass"), ""); /* the empty one */
  msg_envelope_done(&env);
  assert_int_equal(msg_scrub_secrets(f, body_off, ctx_key_is_secret, &lo, &hi), 0);
}

static void test_addr(void **state)
{
  (void)state;
  const char *good[] = {"a@b.c", "first.last@example.com", "\"odd @ \\\"x\"@example.com",
                        "x+tag@sub-d.example", "u@[IPv6:2001:db8::1]", "j\xc3\xb6rg@b\xc3\xbc.de",
                        "a@localhost"};
  const char *bad[] = {"", "plain", "@example.com", "a@", "a..b@example.com", ".a@example.com",
                       "a.@example.com", "a b@example.com", "a@-example.com", "a@example-.com",
                       "a@exa_mple.com", "a@example..com", "a@[300.1.1.1]", "a@[IPv6:zz]",
                       "a(b)@example.com", "\"unterminated@example.com"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    const char *why = msg_addr_check(good[i], strlen(good[i]));
    if (why)
      fail_msg("%s rejected: %s", good[i], why);
  }
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (!msg_addr_check(bad[i], strlen(bad[i])))
      fail_msg("%s accepted", bad[i]);
  char longl[80], longd[300];
  memset(longl, 'a', 65);
  strcpy(longl + 65, "@b.c");
  assert_non_null(msg_addr_check(longl, strlen(longl)));
  memset(longd, 'a', sizeof(longd));
  memcpy(longd, "a@", 2);
  longd[299] = 0;
  assert_non_null(msg_addr_check(longd, strlen(longd)));
}

static void test_parse_bad(void **state)
{
  (void)state;
  static const struct {
    const char *in;
    const char *why;
  } cases[] = {
      {"", "empty file"},
      {"x-receiver: <b@c.d>\n\nbody\n", "no x-sender"},
      {"x-sender: <a@b.c>\nSubject: x\n\nbody\n", "no x-receiver"},
      {"x-sender: <a@b.c>\nx-receiver: <not an address>\n\nbody\n", "bad x-receiver address"},
      {"x-sender: <a@b.c>\nx-receiver: <>\n\nb\n", "bad x-receiver address"},
      {"x-sender: a@b.c>\nx-receiver: <d@e.f>\n\nb\n", "unbalanced"},
      {"x-sender: <a@b.c>\nx-sender: <a@b.c>\nx-receiver: <d@e.f>\n\nb\n", "second x-sender"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\nSubject: s\nx-receiver: <g@h.i>\n\nb\n",
       "envelope line after the message started"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\n", "no message after the envelope"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\nSubject: \x01\x02\n\nb\n", "control character"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\nnot a header line\n\nb\n", "neither"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\nx-context: novalue\n\nb\n", "key=value"},
      {"x-sender: <a@b.c>\nx-receiver: <d@e.f>\nx-binding: has space\n\nb\n", "bad x-binding"},
      {"\x7f" "ELF\x02\x01\x01garbage\xff\xfe", "no x-sender"},
  };
  char why[256];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    why[0] = 0;
    assert_int_equal(parse(cases[i].in, why), -EBADMSG);
    if (!strstr(why, cases[i].why))
      fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, why, cases[i].why);
  }
  /* NUL bytes (needs explicit lengths). */
  const char nul[] = "x-sender: <a@b.c>\nx-receiver: <d@e.f>\n\nbo\0dy\n";
  struct msg_envelope env;
  assert_int_equal(msg_parse(nul, sizeof(nul) - 1, &env, why, sizeof(why)), -EBADMSG);
  assert_non_null(strstr(why, "NUL byte"));
  msg_envelope_done(&env);
}

/* Ids print as "%016llx-%04x" and parse back. */
static void test_id_format(void **state)
{
  (void)state;
  const uint64_t ids[] = {0, 1, 0x0123456789abcdefull, UINT64_MAX, 0x19a3f0c2b1400000ull};
  const uint16_t nodes[] = {0, 1, 0xbeef, 0xffff, 0x0a00};
  for (size_t i = 0; i < 5; i++) {
    struct spool_msg m = {.id = ids[i], .node = nodes[i]};
    char got_[SPOOL_ID_LEN + 1], want[64];
    snprintf(want, sizeof(want), "%016llx-%04x", (unsigned long long)ids[i], (unsigned)nodes[i]);
    assert_string_equal(spool_msg_id_str(&m, got_), want);
    uint64_t v;
    uint16_t nd;
    assert_int_equal(spool_id_parse(got_, &v, &nd), 0);
    assert_true(v == ids[i] && nd == nodes[i]);
  }
}

static bool have_io_uring(void);

/* ---- spool on disk ---- */

static char base[256];
static struct spool_msg *got[4096];
static size_t ngot;
static char bad_names[64][256];
static char bad_reasons[64][256];
static size_t nbad;

static void on_msg(void *arg, struct spool_msg *m)
{
  (void)arg;
  if (ngot < 4096)
    got[ngot++] = m;
  else
    spool_msg_free(m);
}

static void on_bad(void *arg, const char *name, const char *reason)
{
  (void)arg;
  if (nbad < 64) {
    snprintf(bad_names[nbad], 256, "%s", name);
    snprintf(bad_reasons[nbad], 256, "%s", reason);
    nbad++;
  }
}

static void reset_got(void)
{
  for (size_t i = 0; i < ngot; i++)
    spool_msg_free(got[i]);
  ngot = 0;
  nbad = 0;
}

static void put_file(const char *name, const void *data, size_t len)
{
  char path[512];
  snprintf(path, sizeof(path), "%s/pickup/%s", base, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

/* Rename pickup/from to pickup/to (a producer renaming its file in). */
static void rename_in(const char *from, const char *to)
{
  char a[600], b[600];
  snprintf(a, sizeof(a), "%s/pickup/%s", base, from);
  snprintf(b, sizeof(b), "%s/pickup/%s", base, to);
  assert_int_equal(rename(a, b), 0);
}

static void put_msg(const char *name, const char *rcpts, const char *extra)
{
  char b[4096];
  int n = snprintf(b, sizeof(b), "x-sender: <s@example.com>\n%s%sSubject: %s\n\nbody of %s\n",
                   rcpts, extra ? extra : "", name, name);
  put_file(name, b, (size_t)n);
}

static struct spool *open_spool(struct spool_params *p)
{
  p->spoolbase = base;
  p->on_msg = on_msg;
  p->on_bad = on_bad;
  char err[256];
  struct spool *sp = spool_open(p, err, sizeof(err));
  if (!sp)
    fail_msg("spool_open: %s", err);
  return sp;
}

static void drain(struct spool *sp)
{
  for (int i = 0; i < 1000; i++) {
    long r = spool_ingest(sp, 0);
    assert_true(r >= 0);
    if (r == 0 && spool_ingest(sp, 0) == 0)
      return;
  }
  fail_msg("ingest did not settle");
}

static int rm_rf(const char *path)
{
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
  return system(cmd);
}

static int setup(void **state)
{
  (void)state;
  snprintf(base, sizeof(base), "/tmp/impetus-test-spool-XXXXXX");
  if (!mkdtemp(base))
    return -1;
  ngot = nbad = 0;
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  reset_got();
  spool_test_after_stat = NULL;
  return rm_rf(base) == 0 ? 0 : -1;
}

static bool exists(const char *rel)
{
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", base, rel);
  return access(path, F_OK) == 0;
}

/* Entries of base/rel: the tombs (".c.<id>", claimed pickup files) when
 * tombs, else those not starting with a dot. */
static size_t count_in(const char *rel, bool tombs)
{
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", base, rel);
  DIR *d = opendir(path);
  if (!d)
    return 0;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (tombs ? !strncmp(e->d_name, ".c.", 3) : e->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

static size_t count_dir(const char *rel) { return count_in(rel, false); }
static size_t count_tombs(void) { return count_in("pickup", true); }

static size_t count_queue(void)
{
  size_t n = 0;
  for (int b = 0; b < 256; b++) {
    char rel[32];
    snprintf(rel, sizeof(rel), "queue/%02x", b);
    n += count_dir(rel);
  }
  return n;
}

static void qpath(const struct spool_msg *m, const char *suffix, char *out, size_t n)
{
  char id[SPOOL_ID_LEN + 1];
  snprintf(out, n, "%s/queue/%02x/%s%s", base, m->bucket, spool_msg_id_str(m, id), suffix);
}

static void check_why(const char *name, const char *reason)
{
  char rel[300];
  snprintf(rel, sizeof(rel), "bad/%s.why", name);
  if (!exists(rel)) {
    for (size_t i = 0; i < nbad; i++)
      fprintf(stderr, "reported: %s: %s\n", bad_names[i], bad_reasons[i]);
    fail_msg("%s is missing", rel);
  }
  char path[600];
  snprintf(path, sizeof(path), "%s/%s", base, rel);
  FILE *f = fopen(path, "r");
  char line[512] = "";
  assert_non_null(fgets(line, sizeof(line), f));
  fclose(f);
  if (!strstr(line, reason))
    fail_msg("%s: \"%s\" lacks \"%s\"", rel, line, reason);
  bool reported = false;
  for (size_t i = 0; i < nbad; i++)
    if (!strcmp(bad_names[i], name) && strstr(bad_reasons[i], reason))
      reported = true;
  if (!reported)
    fail_msg("%s was not reported through on_bad", name);
}

static int truncate_fd_once;
static void truncate_hook(int fd)
{
  if (truncate_fd_once) {
    truncate_fd_once = 0;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (truncate(path, 10) != 0)
      abort();
  }
}

static void noop_after_stat(int fd)
{
  (void)fd;
}

static char vanish_path[512];
static int on_ingest_vanish(void *arg, struct spool_msg *m, char *why, size_t n)
{
  (void)arg;
  (void)m;
  (void)why;
  (void)n;
  if (vanish_path[0]) {
    unlink(vanish_path);
    vanish_path[0] = 0;
  }
  return 0;
}

static void put_sized(const char *name, size_t size, char c);

static void bad_inputs(void)
{
  struct spool_params p = {.max_message_size = 20u * 1024 * 1024};
  struct spool *sp = open_spool(&p);
  put_msg("good1", "x-receiver: <r1@example.com>\n", NULL);
  put_file("nosender", "x-receiver: <r@example.com>\n\nb\n", 29);
  put_file("norcpt", "x-sender: <s@example.com>\nSubject: x\n\nb\n", 40);
  put_msg("badaddr", "x-receiver: <nobody>\n", NULL);
  put_msg("late", "x-receiver: <r@example.com>\n", "Subject: early\nx-receiver: <z@example.com>\n");
  const char nul[] = "x-sender: <a@b.c>\nx-receiver: <d@e.f>\n\nbo\0dy\n";
  put_file("nul", nul, sizeof(nul) - 1);
  /* an empty file is rejected at once only when renamed in: written in
   * place, it may be a new file whose writer has not opened it yet */
  put_file(".empty.tmp", "", 0);
  rename_in(".empty.tmp", "empty");
  put_file(".hidden", "junk", 4);
  put_file("ignored.tmp", "junk", 4);
  /* A 10 MB header line. */
  size_t big = 10u * 1024 * 1024;
  char *b = malloc(big + 200);
  int n = snprintf(b, 200, "x-sender: <s@example.com>\nx-receiver: <r@example.com>\nSubject: ");
  memset(b + n, 'a', big);
  memcpy(b + n + big, "\n\nbody\n", 7);
  put_file("hugeline", b, (size_t)n + big + 7);
  /* Over Max_Message_Size (20 MB here). */
  char *c = malloc(21u * 1024 * 1024);
  memset(c, 'b', 21u * 1024 * 1024);
  memcpy(c, "x-sender: <s@example.com>\nx-receiver: <r@example.com>\n\n", 55);
  put_file("toobig", c, 21u * 1024 * 1024);
  free(b);
  free(c);
  put_msg("good2", "x-receiver: <r2@example.com>\nx-receiver: <r3@example.com>\n", NULL);
  drain(sp);
  assert_int_equal(ngot, 2);
  check_why("nosender", "no x-sender");
  check_why("norcpt", "no x-receiver");
  check_why("badaddr", "bad x-receiver address");
  check_why("late", "envelope line after the message started");
  check_why("nul", "NUL byte");
  check_why("empty", "empty file");
  check_why("hugeline", "header line 3 is longer than 998 bytes");
  check_why("toobig", "over Max_Message_Size");
  assert_true(exists("bad/nosender") && exists("bad/toobig") && exists("bad/empty"));
  assert_true(exists("pickup/.hidden") && exists("pickup/ignored.tmp"));
  /* 2 messages: body + .m each, or one journal segment */
  assert_int_equal(count_queue(), 0);
  assert_int_equal(count_dir("queue/journal"), 1);
  /* Truncated while being read: a file bigger than the ring's slot is
   * read again with fstat and pread, where the hook runs. */
  truncate_fd_once = 1;
  spool_test_after_stat = truncate_hook;
  /* renamed in: a file written in place is read under a read lease, so
   * no truncate(2) can come while it is read (it would wait for the
   * lease, here held by the same thread) */
  put_sized(".trunc.tmp", 5u * 1024 * 1024, 't');
  rename_in(".trunc.tmp", "trunc");
  drain(sp);
  spool_test_after_stat = NULL;
  check_why("trunc", "truncated while being read");
  /* Removed by its producer after the claim: the hook of the first file
   * unlinks the second's name. */
  spool_test_after_stat = noop_after_stat;
  p.on_ingest = on_ingest_vanish;
  spool_close(sp);
  sp = open_spool(&p);
  put_sized("va", 5u * 1024 * 1024, 'a');
  put_sized("vb", 5u * 1024 * 1024, 'b');
  /* The spool takes a listing in inode order: the second is the higher inode. */
  struct stat sa, sb;
  char pa[600], pb[600];
  snprintf(pa, sizeof(pa), "%s/pickup/va", base);
  snprintf(pb, sizeof(pb), "%s/pickup/vb", base);
  assert_int_equal(stat(pa, &sa), 0);
  assert_int_equal(stat(pb, &sb), 0);
  const char *second = sa.st_ino > sb.st_ino ? "va" : "vb";
  snprintf(vanish_path, sizeof(vanish_path), "%s/pickup/%s", base, second);
  size_t before = ngot;
  drain(sp);
  /* Both are claimed (renamed to their tombs) before either is read: a
   * producer's unlink of the name afterwards finds nothing to remove, and
   * the claimed file, the engine's now, is ingested. */
  assert_int_equal(ngot, before + 2);
  assert_false(exists("bad/va.why") || exists("bad/vb.why"));
  assert_int_equal(count_dir("pickup"), 1); /* ignored.tmp (count_dir skips dot files) */
  spool_test_after_stat = NULL;
  spool_close(sp);
}


/* Issue 18 item 13: one address given 1,000 times is one recipient (the
 * domain compared without case, the local part with), and the removal is
 * reported through on_note. */
static char note_text[512];
static size_t nnotes;
static void on_note(void *arg, const char *name, const char *text)
{
  (void)arg;
  (void)name;
  snprintf(note_text, sizeof(note_text), "%s", text);
  nnotes++;
}

static void test_dup_rcpts(void **state)
{
  (void)state;
  struct buf b = {0};
  buf_printf(&b, "x-sender: <s@example.com>\n");
  for (int i = 0; i < 1000; i++)
    buf_printf(&b, "x-receiver: <dup@example.com>\n");
  buf_printf(&b, "x-receiver: <dup@EXAMPLE.com>\nx-receiver: <Dup@example.com>\n"
                 "x-receiver: <other@example.com>\nSubject: dups\n\nbody\n");
  struct msg_envelope env;
  char why[256];
  assert_int_equal(msg_parse((const char *)b.data, b.len, &env, why, sizeof(why)), 0);
  assert_int_equal(env.nrcpt, 3);
  assert_int_equal(env.ndup, 1000);
  assert_string_equal(env.rcpt[0], "dup@example.com");
  assert_string_equal(env.rcpt[1], "Dup@example.com");
  assert_string_equal(env.rcpt[2], "other@example.com");
  msg_envelope_done(&env);
  /* through the spool: one R, one recipient state, one note */
  struct spool_params p = {.on_note = on_note};
  struct spool *sp = open_spool(&p);
  nnotes = 0;
  put_file("dups", b.data, b.len);
  drain(sp);
  assert_int_equal(ngot, 1);
  assert_int_equal(got[0]->nrcpt, 3);
  assert_int_equal(nnotes, 1);
  assert_non_null(strstr(note_text, "removed 1000 duplicate x-receiver lines (3 recipients left)"));
  spool_close(sp);
  buf_done(&b, 0);
}

/* Issue 18 item 9: a body line over 998 bytes is refused at pickup (to
 * bad/ with the reason), a line of exactly 998 bytes is taken. */
static void test_long_body_line(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  const char *head = "x-sender: <s@example.com>\nx-receiver: <r@example.com>\nSubject: l\n\n";
  char f[4096];
  size_t hl = strlen(head);
  memcpy(f, head, hl);
  memcpy(f + hl, "short\r\n", 7);
  memset(f + hl + 7, 'x', 1009);
  memcpy(f + hl + 7 + 1009, "\r\nend\n", 6);
  put_file("long1009", f, hl + 7 + 1009 + 6);
  memset(f + hl + 7, 'y', 998);
  memcpy(f + hl + 7 + 998, "\r\nend\n", 6);
  put_file("ok998", f, hl + 7 + 998 + 6);
  drain(sp);
  assert_int_equal(ngot, 1);
  check_why("long1009", "body line 2 is longer than 998 bytes (1009)");
  assert_true(exists("bad/long1009"));
  spool_close(sp);
}


/* Issue 18 item 5: pickup names longer than 231 bytes are taken (they
 * used to stay in pickup/ for ever, unreported); a rejected one goes to
 * bad/ under its first 200 bytes plus the id, with a .why and a report
 * that names it whole. */
static void test_long_names(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  char good[241], badn[256];
  memset(good, 'g', 240);
  good[240] = 0;
  memset(badn, 'b', 255);
  badn[255] = 0;
  put_msg(good, "x-receiver: <a@example.com>\n", NULL);
  put_file(badn, "x-sender: <s@example.com>\nSubject: x\n\nb\n", 40);
  drain(sp);
  assert_int_equal(ngot, 1);
  assert_int_equal(count_dir("pickup"), 0);
  assert_int_equal(nbad, 1);
  assert_int_equal(strlen(bad_names[0]), 255);
  assert_non_null(strstr(bad_reasons[0], "no x-receiver"));
  assert_int_equal(count_dir("bad"), 2); /* bbb...b.<id> and its .why */
  spool_close(sp);
}

static void test_bad_inputs(void **state)
{
  (void)state;
  bad_inputs();
}

/* Messages in their own files (spilled, as deferred messages are): file
 * and directory modes, ids in order, outcomes, and recovery of that
 * layout with damaged metadata. */
static void test_modes_ids_and_recovery(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  char name[32];
  for (int i = 0; i < 50; i++) {
    snprintf(name, sizeof(name), "m%02d", i);
    put_msg(name, "x-receiver: <a@example.com>\nx-receiver: <b@example.com>\n"
                  "x-receiver: <c@example.com>\n", "x-binding: b1\n");
  }
  char pdir[300];
  snprintf(pdir, sizeof(pdir), "%s/pickup", base);
  chmod(pdir, 0755);
  drain(sp);
  assert_int_equal(ngot, 50);
  struct spool_txn *ts = spool_txn_new(sp); /* all wait for a retry: spilled */
  for (size_t i = 0; i < ngot; i++)
    spool_txn_spill(ts, got[i]);
  assert_int_equal(spool_txn_commit(ts), 0);
  spool_txn_free(ts);
  char path[512], prev[SPOOL_ID_LEN + 1] = "", id[SPOOL_ID_LEN + 1];
  struct stat st;
  for (size_t i = 0; i < ngot; i++) {
    qpath(got[i], "", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal((uint64_t)st.st_size, got[i]->body_off + got[i]->body_size);
    qpath(got[i], ".m", path, sizeof(path));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    spool_msg_id_str(got[i], id);
    assert_true(strcmp(prev, id) < 0);
    strcpy(prev, id);
    uint64_t v;
    uint16_t node;
    assert_int_equal(spool_id_parse(id, &v, &node), 0);
    assert_true(v == got[i]->id && node == got[i]->node);
    assert_string_equal(got[i]->binding, "b1");
  }
  struct stat dst;
  snprintf(path, sizeof(path), "%s/queue", base);
  assert_int_equal(stat(path, &dst), 0);
  assert_int_equal(dst.st_mode & 0777, 0700);
  /* Outcomes: msg 0: a delivered, b failed; msg 1: all done + removal cut
   * short by a "crash" (we keep its files); msg 2: removed. */
  struct spool_txn *t = spool_txn_new(sp);
  spool_txn_rcpt(t, got[0], 0, SPOOL_RCPT_DELIVERED);
  spool_txn_rcpt(t, got[0], 1, SPOOL_RCPT_FAILED);
  spool_txn_retry(t, got[0], 3, 1234567);
  for (uint32_t r = 0; r < 3; r++)
    spool_txn_rcpt(t, got[1], r, SPOOL_RCPT_DELIVERED);
  for (uint32_t r = 0; r < 3; r++)
    spool_txn_rcpt(t, got[2], r, SPOOL_RCPT_DELIVERED);
  char removed[SPOOL_ID_LEN + 1];
  spool_msg_id_str(got[2], removed);
  spool_txn_remove(t, got[2]);
  got[2] = NULL;
  assert_int_equal(spool_txn_commit(t), 0);
  spool_txn_free(t);
  assert_int_equal(got[0]->npending, 1);
  /* Corrupt message 3's header record; cut message 4's metadata short
   * (nothing says what its body is: kept in bad/, never deleted). */
  char id3[SPOOL_ID_LEN + 1], id4[SPOOL_ID_LEN + 1];
  spool_msg_id_str(got[3], id3);
  spool_msg_id_str(got[4], id4);
  qpath(got[3], ".m", path, sizeof(path));
  int fd = open(path, O_RDWR);
  char ch;
  assert_int_equal(pread(fd, &ch, 1, 30), 1);
  ch ^= 0x40;
  assert_int_equal(pwrite(fd, &ch, 1, 30), 1);
  close(fd);
  qpath(got[4], ".m", path, sizeof(path));
  assert_int_equal(truncate(path, 20), 0);
  char last[SPOOL_ID_LEN + 1];
  spool_msg_id_str(got[49], last);
  reset_got();
  spool_close(sp);

  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 46); /* 50 - removed - corrupted - done - cut */
  assert_int_equal(ngot, 46);
  bool saw0 = false, saw4 = false;
  for (size_t i = 0; i < ngot; i++) {
    spool_msg_id_str(got[i], id);
    assert_string_not_equal(id, removed);
    assert_string_not_equal(id, id3);
    if (!strcmp(id, id4))
      saw4 = true;
    if (got[i]->npending == 1) {
      saw0 = true;
      assert_int_equal(got[i]->rcpt_state[0], SPOOL_RCPT_DELIVERED);
      assert_int_equal(got[i]->rcpt_state[1], SPOOL_RCPT_FAILED);
      assert_int_equal(got[i]->rcpt_state[2], SPOOL_RCPT_PENDING);
      assert_int_equal(got[i]->attempts, 3);
      assert_int_equal(got[i]->next_attempt_ms, 1234567);
    }
    assert_string_equal(got[i]->binding, "b1");
    assert_string_equal(got[i]->sender, "s@example.com");
  }
  assert_true(saw0 && !saw4);
  check_why(id4, "queued message without usable metadata");
  char rel[64];
  snprintf(rel, sizeof(rel), "bad/%s.why", id3);
  assert_true(exists(rel));
  snprintf(rel, sizeof(rel), "bad/%s.m", id3);
  assert_true(exists(rel));
  snprintf(rel, sizeof(rel), "bad/%s", id3);
  assert_true(exists(rel));
  check_why(id3, "fails its checksum");
  /* New ids after the restart sort after every old one. */
  put_msg("after", "x-receiver: <a@example.com>\n", NULL);
  size_t before = ngot;
  drain(sp);
  assert_int_equal(ngot, before + 1);
  spool_msg_id_str(got[before], id);
  assert_true(strcmp(id, last) > 0);
  spool_close(sp);
}

static const char *keep_name;
static bool keep_pickup(const char *name)
{
  return keep_name && !strcmp(name, keep_name);
}

/* Pickup_Claim = exchange (issue 25). A crash between a batch's sync and
 * the removal of its pickup files leaves the file in the claimed
 * directory under its own name: recovery knows it by its journal entry
 * (name, inode, size, stamp) and removes it, so the journal's copy is the
 * only one. A file in the claimed directory that no entry names (a crash
 * right after the exchange) is left there and taken after the next
 * exchange; a name reused in pickup/ after the claim is another file,
 * taken too. */
static void test_exchange_crash(void **state)
{
  (void)state;
  struct spool_params p = {.pickup_exchange = true};
  struct spool *sp = open_spool(&p);
  put_msg("again", "x-receiver: <z@example.com>\n", NULL);
  put_msg("other", "x-receiver: <z@example.com>\n", NULL);
  keep_name = "again";
  spool_test_keep_pickup = keep_pickup;
  for (int i = 0; i < 100 && ngot < 2; i++) /* then "the process dies" */
    assert_true(spool_ingest(sp, 50) >= 0);
  spool_test_keep_pickup = NULL;
  keep_name = NULL;
  assert_int_equal(ngot, 2);
  assert_true(exists("claim/pickup/again")); /* claimed, durable, not removed */
  assert_false(exists("claim/pickup/other"));
  assert_false(exists("pickup/again"));
  put_msg("again", "x-receiver: <y@example.com>\n", NULL); /* the name reused: a new file */
  reset_got();
  spool_close(sp);
  char path[600];
  snprintf(path, sizeof path, "%s/claim/pickup/unclaimed", base);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("x-sender: <s@example.com>\nx-receiver: <u@example.com>\nSubject: u\n\nbody\n", f);
  fclose(f);

  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 2); /* again (z) and other: the journal's copies */
  assert_int_equal(ngot, 2);
  assert_false(exists("claim/pickup/again")); /* the committed file is gone */
  assert_true(exists("claim/pickup/unclaimed")); /* no entry's: left to be taken */
  assert_true(exists("pickup/again"));
  reset_got();
  for (int i = 0; i < 200 && ngot < 2; i++)
    assert_true(spool_ingest(sp, 50) >= 0);
  assert_int_equal(ngot, 2);
  bool y = false, u = false;
  for (size_t i = 0; i < ngot; i++) {
    y |= !strcmp(got[i]->rcpt[0], "y@example.com");
    u |= !strcmp(got[i]->rcpt[0], "u@example.com");
  }
  assert_true(y && u);
  for (int i = 0; i < 5; i++) /* nothing else turns up */
    assert_true(spool_ingest(sp, 20) >= 0);
  assert_int_equal(ngot, 2);
  assert_int_equal(count_in("pickup", false), 0);
  assert_int_equal(count_in("claim/pickup", false), 0);
  assert_int_equal(nbad, 0);
  reset_got();
  spool_close(sp);
}

/* The body of m as read back through the spool. */
static void body_of(struct spool *sp, const struct spool_msg *m, char *out, size_t n)
{
  int fd = spool_open_body(sp, m);
  assert_true(fd >= 0);
  size_t want = m->body_size < n - 1 ? (size_t)m->body_size : n - 1;
  assert_int_equal(pread(fd, out, want, (off_t)m->body_off), (ssize_t)want);
  out[want] = 0;
  spool_close_body(sp, fd);
}

static void test_journal(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  char name[32], body[256], path[600];
  for (int i = 0; i < 50; i++) {
    snprintf(name, sizeof(name), "m%02d", i);
    put_msg(name, "x-receiver: <a@example.com>\nx-receiver: <b@example.com>\n"
                  "x-receiver: <c@example.com>\n", "x-binding: b1\n");
  }
  drain(sp);
  assert_int_equal(ngot, 50);
  assert_int_equal(count_dir("pickup"), 0);
  assert_int_equal(count_queue(), 0); /* no file per message */
  assert_int_equal(count_dir("queue/journal"), 1);
  struct stat st;
  snprintf(path, sizeof(path), "%s/queue/journal/00000001", base);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  for (size_t i = 0; i < ngot; i++) {
    assert_true(got[i]->jseg == 1);
    assert_string_equal(got[i]->binding, "b1");
    body_of(sp, got[i], body, sizeof(body));
    assert_non_null(strstr(body, "Subject: m"));
    assert_null(strstr(body, "x-receiver")); /* envelope lines are not the message */
    assert_int_equal(spool_load_ctx(sp, got[i]), 0);
  }
  /* msg 0: a delivered, b failed (stays in the journal: JSTATE); msg 1:
   * done (DONE); msg 2: deferred alone -> spilled into its own files. */
  char id0[SPOOL_ID_LEN + 1], id1[SPOOL_ID_LEN + 1], id2[SPOOL_ID_LEN + 1];
  spool_msg_id_str(got[0], id0);
  spool_msg_id_str(got[1], id1);
  spool_msg_id_str(got[2], id2);
  char body2[256];
  body_of(sp, got[2], body2, sizeof(body2));
  struct spool_txn *t = spool_txn_new(sp);
  spool_txn_rcpt(t, got[0], 0, SPOOL_RCPT_DELIVERED);
  spool_txn_rcpt(t, got[0], 1, SPOOL_RCPT_FAILED);
  spool_txn_retry(t, got[0], 3, 1234567);
  for (uint32_t r = 0; r < 3; r++)
    spool_txn_rcpt(t, got[1], r, SPOOL_RCPT_DELIVERED);
  spool_txn_remove(t, got[1]);
  got[1] = NULL;
  spool_txn_rcpt(t, got[2], 0, SPOOL_RCPT_DELIVERED);
  spool_txn_retry(t, got[2], 1, 7654321);
  spool_txn_spill(t, got[2]);
  assert_int_equal(spool_txn_commit(t), 0);
  spool_txn_free(t);
  assert_int_equal(got[2]->jseg, 0);
  assert_int_equal(count_queue(), 2); /* msg 2: body + .m */
  body_of(sp, got[2], body, sizeof(body));
  assert_string_equal(body, body2);
  /* A crash between a batch's sync and the removal of its pickup file. */
  keep_name = "again";
  spool_test_keep_pickup = keep_pickup;
  put_msg("again", "x-receiver: <z@example.com>\n", NULL);
  struct spool_stats st0, st1;
  spool_get_stats(sp, &st0);
  for (int i = 0; i < 100 && ngot < 51; i++) /* then "the process dies": no more rounds */
    assert_true(spool_ingest(sp, 50) >= 0);
  spool_test_keep_pickup = NULL;
  assert_int_equal(ngot, 51);
  spool_get_stats(sp, &st1);
  if (have_io_uring()) /* read by the ring: its identity is the content stamp */
    assert_int_equal(st1.ring_reads - st0.ring_reads, 1);
  /* claimed before it was read: the file is under its tomb, not its name */
  assert_false(exists("pickup/again"));
  assert_int_equal(count_tombs(), 1);
  reset_got();
  spool_close(sp);

  sp = open_spool(&p);
  /* 50 - done + "again": its tomb is the file its journal entry was read
   * from, so the journal's copy counts and the tomb is removed */
  assert_int_equal(spool_recover(sp), 50);
  assert_int_equal(count_tombs(), 0);
  bool saw0 = false, saw2 = false;
  int nobind = 0;
  for (size_t i = 0; i < ngot; i++) {
    char id[SPOOL_ID_LEN + 1];
    spool_msg_id_str(got[i], id);
    assert_string_not_equal(id, id1);
    if (!strcmp(id, id0)) {
      saw0 = true;
      assert_int_equal(got[i]->npending, 1);
      assert_int_equal(got[i]->rcpt_state[0], SPOOL_RCPT_DELIVERED);
      assert_int_equal(got[i]->rcpt_state[1], SPOOL_RCPT_FAILED);
      assert_int_equal(got[i]->attempts, 3);
      assert_int_equal(got[i]->next_attempt_ms, 1234567);
    }
    if (!strcmp(id, id2)) {
      saw2 = true;
      assert_int_equal(got[i]->jseg, 0); /* its own files won over the journal */
      assert_int_equal(got[i]->npending, 2);
      assert_int_equal(got[i]->next_attempt_ms, 7654321);
    }
    if (got[i]->binding)
      assert_string_equal(got[i]->binding, "b1");
    else
      nobind++; /* "again" */
  }
  assert_int_equal(nobind, 1);
  assert_true(saw0 && saw2);
  drain(sp); /* nothing is ingested twice */
  assert_int_equal(ngot, 50);
  assert_false(exists("pickup/again"));
  /* Everything delivered: the journal and the queue empty out. */
  t = spool_txn_new(sp);
  for (size_t i = 0; i < ngot; i++) {
    for (uint32_t r = 0; r < got[i]->nrcpt; r++)
      if (got[i]->rcpt_state[r] == SPOOL_RCPT_PENDING)
        spool_txn_rcpt(t, got[i], r, SPOOL_RCPT_DELIVERED);
    spool_txn_remove(t, got[i]);
    got[i] = NULL;
  }
  assert_int_equal(spool_txn_commit(t), 0);
  spool_txn_free(t);
  ngot = 0;
  drain(sp);
  assert_int_equal(count_dir("queue/journal"), 0);
  assert_int_equal(count_queue(), 0);
  spool_close(sp);
  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 0);
  spool_close(sp);
}

static void test_journal_damage(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  put_msg("d1", "x-receiver: <a@example.com>\n", NULL);
  put_msg("d2", "x-receiver: <b@example.com>\n", NULL);
  put_msg("d3", "x-receiver: <c@example.com>\n", NULL);
  drain(sp);
  assert_int_equal(ngot, 3);
  /* sorted by name? no: by scan order; find the entry offsets */
  uint64_t off[3];
  char sub[3][16];
  for (int i = 0; i < 3; i++) {
    char body[256];
    body_of(sp, got[i], body, sizeof(body));
    off[i] = got[i]->body_off;
    snprintf(sub[i], sizeof(sub[i]), "%.3s", strstr(body, "Subject: ") + 9);
  }
  int last = off[0] > off[1] ? (off[0] > off[2] ? 0 : 2) : (off[1] > off[2] ? 1 : 2);
  int first = off[0] < off[1] ? (off[0] < off[2] ? 0 : 2) : (off[1] < off[2] ? 1 : 2);
  uint64_t mid_off = off[3 - first - last];
  reset_got();
  spool_close(sp);
  char path[600];
  snprintf(path, sizeof(path), "%s/queue/journal/00000001", base);
  /* A torn tail: the newest entry loses its last bytes. */
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(truncate(path, st.st_size - 3), 0);
  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 2);
  reset_got();
  spool_close(sp);
  /* A flipped byte in the middle entry's JMSG record (just before its body). */
  int fd = open(path, O_RDWR);
  char ch;
  assert_int_equal(pread(fd, &ch, 1, (off_t)mid_off - 12), 1);
  ch ^= 0x40;
  assert_int_equal(pwrite(fd, &ch, 1, (off_t)mid_off - 12), 1);
  close(fd);
  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 1); /* only the first one is still trusted */
  char b[256];
  body_of(sp, got[0], b, sizeof(b));
  assert_non_null(strstr(b, sub[first]));
  check_why("journal-00000001", "fails its checksum");
  assert_true(exists("bad/journal-00000001"));
  reset_got();
  spool_close(sp);
}

static void dicts(bool keep)
{
  struct spool_params p = {.keep_dicts_in_memory = keep};
  struct spool *sp = open_spool(&p);
  put_msg("d1", "x-receiver: <a@example.com>\n",
          "x-context: campaign=42\nx-context: outbound_smtp_auth_pass=from-pickup\n");
  drain(sp);
  assert_int_equal(ngot, 1);
  struct spool_msg *m = got[0];
  /* In memory after ingest either way (issue 18 item 12): the first
   * attempt needs no read-back. */
  assert_non_null(m->mess);
  assert_non_null(m->conn);
  assert_int_equal(spool_load_ctx(sp, m), 0);
  struct spool_stats st;
  spool_get_stats(sp, &st);
  assert_int_equal(st.ctx_loads, 0);
  assert_string_equal(ctx_get(m->mess, "campaign"), "42");
  /* The pickup secret stayed in memory, never on disk. */
  assert_string_equal(ctx_get(m->mess, "outbound_smtp_auth_pass"), "from-pickup");
  assert_int_equal(ctx_set(m->mess, "outbound_smtp_auth_user", "bob"), 0);
  assert_int_equal(ctx_set(m->mess, "outbound_smtp_auth_pass", "hunter2"), 0);
  assert_int_equal(ctx_set(m->conn, "c", "conn-value"), 0);
  spool_msg_set_binding(m, "later");
  struct spool_txn *t = spool_txn_new(sp);
  spool_txn_ctx(t, m);
  assert_int_equal(spool_txn_commit(t), 0);
  spool_txn_free(t);
  spool_drop_ctx(sp, m);
  assert_true(keep ? m->mess != NULL : m->mess == NULL);
  assert_int_equal(spool_load_ctx(sp, m), 0);
  assert_string_equal(ctx_get(m->mess, "outbound_smtp_auth_user"), "bob");
  assert_string_equal(ctx_get(m->mess, "outbound_smtp_auth_pass"), "hunter2");
  assert_string_equal(ctx_get(m->conn, "c"), "conn-value");
  /* No secret anywhere in the spool files. */
  char path[512];
  qpath(m, ".m", path, sizeof(path));
  FILE *f = fopen(path, "rb");
  char data[8192];
  size_t n = fread(data, 1, sizeof(data), f);
  fclose(f);
  assert_null(memmem(data, n, "hunter2", 7));
  assert_null(memmem(data, n, "from-pickup", 11));
  assert_non_null(memmem(data, n, "bob", 3));
  reset_got();
  spool_close(sp);
  /* After a restart: dictionaries from disk, binding kept, secret gone. */
  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 1);
  m = got[0];
  assert_string_equal(m->binding, "later");
  assert_int_equal(spool_load_ctx(sp, m), 0);
  assert_string_equal(ctx_get(m->mess, "campaign"), "42");
  assert_string_equal(ctx_get(m->mess, "outbound_smtp_auth_user"), "bob");
  assert_null(ctx_get(m->mess, "outbound_smtp_auth_pass"));
  /* Body access. */
  int fd = spool_open_body(sp, m);
  assert_true(fd >= 0);
  char body[16] = "";
  assert_int_equal(pread(fd, body, 11, (off_t)m->body_off), 11);
  assert_string_equal(body, "Subject: d1");
  close(fd);
  /* spool_bad moves it with a reason. */
  char id[SPOOL_ID_LEN + 1];
  spool_msg_id_str(m, id);
  assert_int_equal(spool_bad(sp, m, "operator said so"), 0);
  got[0] = NULL;
  check_why(id, "operator said so");
  assert_int_equal(count_queue(), 0);
  reset_got();
  spool_close(sp);
}


/* Issue 18 item 12: with Keep_Message_Dicts_In_Memory = false a message's
 * dictionaries stay in memory for its first attempt and are dropped when
 * it moves to the delayed queue (spool_txn_spill, the first transient
 * failure), then read back correctly, the pickup secret included. */
static void test_dicts_dropped_on_defer(void **state)
{
  (void)state;
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  put_msg("dd", "x-receiver: <a@example.com>\n",
          "x-context: campaign=7\nx-context: outbound_smtp_auth_pass=pickup-pw\n");
  drain(sp);
  assert_int_equal(ngot, 1);
  struct spool_msg *m = got[0];
  assert_non_null(m->mess);
  assert_string_equal(ctx_get(m->mess, "campaign"), "7"); /* the first attempt reads in place */
  struct spool_stats st;
  spool_get_stats(sp, &st);
  assert_int_equal(st.ctx_loads, 0);
  struct spool_txn *t = spool_txn_new(sp);
  spool_txn_retry(t, m, 1, 12345);
  spool_txn_spill(t, m);
  assert_int_equal(spool_txn_commit(t), 0);
  spool_txn_free(t);
  assert_null(m->mess); /* deferred: dropped */
  assert_null(m->conn);
  assert_int_equal(spool_load_ctx(sp, m), 0);
  spool_get_stats(sp, &st);
  assert_int_equal(st.ctx_loads, 1);
  assert_string_equal(ctx_get(m->mess, "campaign"), "7");
  assert_string_equal(ctx_get(m->mess, "outbound_smtp_auth_pass"), "pickup-pw");
  reset_got();
  spool_close(sp);
}

static void test_dicts_on_disk(void **state)
{
  (void)state;
  dicts(false);
}

static void test_dicts_in_memory(void **state)
{
  (void)state;
  dicts(true);
}

static void test_sync_modes(void **state)
{
  (void)state;
  enum spool_sync modes[] = {SPOOL_SYNC_ALWAYS, SPOOL_SYNC_NONE, SPOOL_SYNC_BATCH};
  for (int i = 0; i < 3; i++) {
    for (int meth = 0; meth < 3; meth++) {
      struct spool_params p = {.sync = modes[i], .sync_method = (enum spool_sync_method)meth};
      struct spool *sp = open_spool(&p);
      for (int j = 0; j < 5; j++) {
        char name[32];
        snprintf(name, sizeof(name), "s%d%d%d", i, meth, j);
        put_msg(name, "x-receiver: <a@example.com>\n", NULL);
      }
      drain(sp);
      assert_int_equal(ngot, 5);
      struct spool_txn *t = spool_txn_new(sp);
      for (size_t j = 0; j < ngot; j++) {
        spool_txn_rcpt(t, got[j], 0, SPOOL_RCPT_DELIVERED);
        spool_txn_remove(t, got[j]);
      }
      ngot = 0;
      assert_int_equal(spool_txn_commit(t), 0);
      spool_txn_free(t);
      assert_int_equal(count_queue(), 0);
      spool_close(sp);
    }
  }
}

/* Pickup files are read with O_NOATIME (a first read of a new file would
 * update its atime under relatime and dirty the inode once more); without
 * the right to (another user's files, no CAP_FOWNER) the spool falls back
 * to plain opens and loses nothing. */
static const struct spool_msg *find_subject(const char *subject, struct spool *sp);

static void test_noatime(void **state)
{
  (void)state;
  if (geteuid() != 0) {
    print_message("SKIP part: not root (cannot test the EPERM fallback)\n");
  }
  struct statvfs vfs;
  assert_int_equal(statvfs(base, &vfs), 0);
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  char path[600];
  /* atime before mtime: a read without O_NOATIME would move it */
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof(name), "na%d", i);
    put_msg(name, "x-receiver: <a@example.com>\n", NULL);
    snprintf(path, sizeof(path), "%s/pickup/%s", base, name);
    struct timespec ts[2] = {{.tv_sec = 1000000}, {.tv_nsec = UTIME_OMIT}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
  }
  keep_name = "na1";
  spool_test_keep_pickup = keep_pickup;
  for (int i = 0; i < 100 && ngot < 3; i++)
    assert_true(spool_ingest(sp, 0) >= 0);
  spool_test_keep_pickup = NULL;
  keep_name = NULL;
  assert_int_equal(ngot, 3);
  assert_int_equal(nbad, 0);
  char id[SPOOL_ID_LEN + 1];
  snprintf(path, sizeof(path), "%s/pickup/.c.%s", base,
           spool_msg_id_str(find_subject("na1", sp), id)); /* under its tomb */
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  if (!(vfs.f_flag & ST_NOATIME)) /* else the test could not fail */
    assert_int_equal(st.st_atim.tv_sec, 1000000);
  assert_int_equal(unlink(path), 0);
  reset_got();
  spool_close(sp);
  if (geteuid() != 0)
    return;

  /* root's files, a spool owned by nobody, the spool run as nobody */
  char cmd[700];
  snprintf(cmd, sizeof(cmd), "chown -R 65534:65534 '%s'", base);
  assert_int_equal(system(cmd), 0);
  for (int i = 0; i < 4; i++) {
    char name[32];
    snprintf(name, sizeof(name), "nb%d", i);
    put_msg(name, "x-receiver: <a@example.com>\n", NULL);
    snprintf(path, sizeof(path), "%s/pickup/%s", base, name);
    assert_int_equal(chown(path, 0, 0), 0);
    assert_int_equal(chmod(path, 0644), 0);
  }
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0)
      _exit(10);
    struct spool_params q = {0};
    q.spoolbase = base;
    q.on_msg = on_msg;
    q.on_bad = on_bad;
    char err[256];
    struct spool *s2 = spool_open(&q, err, sizeof(err));
    if (!s2)
      _exit(11);
    /* written in place by another user, so no lease can tell whether a
     * writer has them open: they are taken once unchanged for 2 s */
    for (int i = 0; i < 100 && ngot < 4; i++)
      if (spool_ingest(s2, 100) < 0)
        _exit(12);
    if (ngot == 4 && nbad == 0 && count_dir("pickup") == 0)
      _exit(0);
    fprintf(stderr, "as nobody: %zu messages, %zu bad (%s: %s), %zu left in pickup/\n", ngot, nbad,
            nbad ? bad_names[0] : "-", nbad ? bad_reasons[0] : "-", count_dir("pickup"));
    _exit(13);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

/* Whether io_uring works here: without it the spool reads every pickup
 * file with plain system calls (and keeps its mtime as the identity). */
static bool have_io_uring(void)
{
  struct io_uring_params prm;
  memset(&prm, 0, sizeof(prm));
  long fd = syscall(__NR_io_uring_setup, 4, &prm);
  if (fd < 0)
    return false;
  close((int)fd);
  return true;
}

/* A message of `size` bytes in total, named name, its body filled with c. */
static void put_sized(const char *name, size_t size, char c)
{
  char *b = malloc(size);
  int n = snprintf(b, size, "x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
                            "Subject: %s\n\n", name);
  memset(b + n, c, size - (size_t)n);
  for (size_t i = (size_t)n + 99; i < size; i += 100) /* body lines of 100 bytes */
    b[i] = '\n';
  b[size - 1] = '\n';
  put_file(name, b, size);
  free(b);
}

static const struct spool_msg *find_subject(const char *subject, struct spool *sp)
{
  char want[64], body[128];
  snprintf(want, sizeof(want), "Subject: %s\n", subject);
  for (size_t i = 0; i < ngot; i++) {
    body_of(sp, got[i], body, sizeof(body));
    if (!strncmp(body, want, strlen(want)))
      return got[i];
  }
  return NULL;
}

static bool keep_stamp(const char *name)
{
  return !strcmp(name, "same") || !strcmp(name, "inplace") || !strcmp(name, "renamed") ||
         !strcmp(name, "big");
}

/* A crash between a batch's sync and the removal of its pickup files,
 * with files read through the ring (their identity: name, inode, size and
 * a content checksum) and a file over the ring's buffer (read with fstat:
 * its mtime). A file left as it was is recognised; a file with the same
 * name and size but other content, whether written over in place (same
 * inode, mtime put back) or renamed over it, is not taken for the
 * journaled message: both messages are kept. */
static void test_journal_stamp(void **state)
{
  (void)state;
  bool ring = have_io_uring();
  if (!ring)
    print_message("SKIP part: no io_uring (pickup files are read with fstat)\n");
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  put_sized("same", 1000, 'a');
  put_sized("inplace", 1000, 'b');
  put_sized("renamed", 1000, 'c');
  put_sized("big", 100000, 'd'); /* over PRE_BUF (32 KB): read with fstat */
  put_sized("other", 1000, 'e');
  spool_test_keep_pickup = keep_stamp;
  for (int i = 0; i < 100 && ngot < 5; i++) /* then "the process dies" */
    assert_true(spool_ingest(sp, 50) >= 0);
  spool_test_keep_pickup = NULL;
  assert_int_equal(ngot, 5);
  assert_int_equal(nbad, 0);
  char bodyb[2000];
  body_of(sp, find_subject("big", sp), bodyb, sizeof(bodyb));
  assert_int_equal(bodyb[strlen("Subject: big\n\n")], 'd');
  /* each pickup file was claimed before it was read: it is under its
   * tomb ".c.<its message id>" */
  char tinplace[600], trenamed[600], id[SPOOL_ID_LEN + 1];
  snprintf(tinplace, sizeof(tinplace), "%s/pickup/.c.%s", base,
           spool_msg_id_str(find_subject("inplace", sp), id));
  snprintf(trenamed, sizeof(trenamed), "%s/pickup/.c.%s", base,
           spool_msg_id_str(find_subject("renamed", sp), id));
  assert_int_equal(count_tombs(), 4); /* "other" was removed */
  reset_got();
  spool_close(sp);

  /* After the crash: the tomb of "inplace" is written over in place, same
   * size, new content, its mtime put back; the tomb of "renamed" is
   * replaced by another file of the same size. */
  char tmp[600];
  struct stat st0, st1;
  assert_int_equal(stat(tinplace, &st0), 0);
  int fd = open(tinplace, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "X", 1, 900), 1);
  close(fd);
  struct timespec ts[2] = {st0.st_atim, st0.st_mtim};
  assert_int_equal(utimensat(AT_FDCWD, tinplace, ts, 0), 0);
  assert_int_equal(stat(tinplace, &st1), 0);
  assert_int_equal(st1.st_ino, st0.st_ino);
  assert_int_equal(st1.st_size, st0.st_size);
  assert_int_equal(st1.st_mtim.tv_nsec, st0.st_mtim.tv_nsec);
  put_sized("renamed.tmp", 1000, 'C');
  snprintf(tmp, sizeof(tmp), "%s/pickup/renamed.tmp", base);
  assert_int_equal(rename(tmp, trenamed), 0);

  sp = open_spool(&p);
  /* all five journal entries are queued; the tombs of same and big are
   * their files and are removed; inplace (content changed: with a
   * checksum stamp it is not the same file) and renamed go back to
   * pickup/ as requeued-<id>: ingested below, a duplicate, never a loss */
  assert_int_equal(spool_recover(sp), 5);
  assert_int_equal(count_tombs(), 0);
  const struct spool_msg *m = find_subject("inplace", sp);
  assert_non_null(m);
  char body[2000];
  body_of(sp, m, body, sizeof(body));
  assert_null(strchr(body, 'X')); /* the journaled content */
  size_t before = ngot;
  drain(sp);
  assert_int_equal(ngot, before + (ring ? 2 : 1)); /* with mtimes, "inplace" passes for the same file */
  assert_int_equal(count_dir("pickup"), 0);
  assert_int_equal(nbad, 0);
  spool_close(sp);
}

/* Sizes around the ring's buffer (PRE_BUF, 32 KB): a file that fills it
 * is read again whole with fstat; all arrive intact. Max_Message_Size is
 * checked on both paths. */
static void test_pre_buf_sizes(void **state)
{
  (void)state;
  struct spool_params p = {.max_message_size = 40000};
  struct spool *sp = open_spool(&p);
  const size_t sizes[] = {32767, 32768, 32769, 40000, 1000};
  const char *names[] = {"s32767", "s32768", "s32769", "s40000", "s1000"};
  for (size_t i = 0; i < 5; i++)
    put_sized(names[i], sizes[i], 'z');
  put_sized("over", 40001, 'z');
  drain(sp);
  assert_int_equal(ngot, 5);
  for (size_t i = 0; i < 5; i++) {
    const struct spool_msg *m = find_subject(names[i], sp);
    assert_non_null(m);
    size_t hdr = (size_t)snprintf(NULL, 0, "x-sender: <s@example.com>\nx-receiver: "
                                          "<r@example.com>\n");
    assert_int_equal(m->body_size, sizes[i] - hdr);
    char *b = malloc(sizes[i] + 1);
    body_of(sp, m, b, sizes[i] + 1);
    assert_int_equal(b[m->body_size - 2], 'z');
    assert_int_equal(b[m->body_size - 1], '\n');
    free(b);
  }
  check_why("over", "over Max_Message_Size");
  struct spool_stats st0, st1;
  spool_get_stats(sp, &st0);
  if (have_io_uring())
    assert_int_equal(st0.ring_reads, 2); /* s32767 and s1000; the others filled the slot */
  reset_got();
  /* The last batch's files averaged over 16 KB: the ring now reads into
   * bigger slots, with a statx after each read for the mtime; the bodies
   * (over JREF_MIN) are written from where they were read. One of them is
   * left in pickup/ as by a crash, and recovery must recognise it. */
  put_sized("r2a", 30000, 'q');
  put_sized("r2b", 39000, 'q');
  put_sized("r2c", 1000, 'q');
  keep_name = "r2b";
  spool_test_keep_pickup = keep_pickup;
  for (int i = 0; i < 100 && ngot < 3; i++) /* then "the process dies" */
    assert_true(spool_ingest(sp, 50) >= 0);
  spool_test_keep_pickup = NULL;
  keep_name = NULL;
  assert_int_equal(ngot, 3);
  spool_get_stats(sp, &st1);
  if (have_io_uring())
    assert_int_equal(st1.ring_reads - st0.ring_reads, 3);
  for (size_t i = 0; i < ngot; i++) {
    char b[40000];
    body_of(sp, got[i], b, sizeof(b));
    assert_int_equal(b[got[i]->body_size - 2], 'q');
  }
  reset_got();
  spool_close(sp);
  sp = open_spool(&p);
  /* 5 + r2a + r2b + r2c: r2b's tomb (read into a big slot, stamped with
   * its mtime) is recognised as its file and removed */
  assert_int_equal(count_tombs(), 1);
  assert_int_equal(spool_recover(sp), 8);
  assert_int_equal(count_tombs(), 0);
  assert_non_null(find_subject("r2b", sp));
  drain(sp);
  assert_int_equal(ngot, 8);
  reset_got();
  spool_close(sp);
  /* and a limit below the ring's buffer, for files the ring read whole */
  struct spool_params q = {.max_message_size = 2000};
  sp = open_spool(&q);
  put_sized("small-over", 2001, 'y');
  put_sized("small-ok", 2000, 'y');
  drain(sp);
  assert_int_equal(ngot, 1);
  check_why("small-over", "over Max_Message_Size");
  spool_close(sp);
}

/* What is not a regular file goes to bad/ with that reason, in both
 * spool layouts, and the rest is ingested. */
static void not_regular(void)
{
  struct spool_params p = {0};
  struct spool *sp = open_spool(&p);
  char path[600];
  snprintf(path, sizeof(path), "%s/pickup/fifo", base);
  assert_int_equal(mkfifo(path, 0600), 0);
  snprintf(path, sizeof(path), "%s/pickup/dir", base);
  assert_int_equal(mkdir(path, 0700), 0);
  put_msg("target", "x-receiver: <a@example.com>\n", NULL);
  snprintf(path, sizeof(path), "%s/pickup/link", base);
  char target[600];
  snprintf(target, sizeof(target), "%s/pickup/target", base);
  assert_int_equal(symlink(target, path), 0);
  put_msg("plain", "x-receiver: <a@example.com>\n", NULL);
  drain(sp);
  assert_int_equal(ngot, 2); /* target and plain */
  check_why("fifo", "not a regular file");
  check_why("dir", "not a regular file");
  check_why("link", "not a regular file");
  assert_true(exists("bad/fifo") && exists("bad/dir"));
  assert_int_equal(count_dir("pickup"), 0);
  spool_close(sp);
}

static void test_not_regular(void **state)
{
  (void)state;
  not_regular();
}


/* A pickup name reused once its file is claimed (here by a directory):
 * the newer entry is never removed with the claimed file (issue 18 item
 * 2); it is handled as input of its own, and only it is affected, not a
 * neighbour in the batch. */
static const char *forget_victim;
static void replace_with_dir(void)
{
  if (!forget_victim)
    return;
  char path[600];
  snprintf(path, sizeof(path), "%s/pickup/%s", base, forget_victim);
  assert_int_equal(access(path, F_OK), -1); /* claimed: under its tomb */
  assert_int_equal(mkdir(path, 0700), 0);
  forget_victim = NULL;
}

static void test_unremovable_pickup(void **state)
{
  (void)state;
  struct spool_params p = {.on_note = on_note};
  struct spool *sp = open_spool(&p);
  char name[16];
  for (int i = 0; i < 24; i++) {
    snprintf(name, sizeof(name), "u%02d", i);
    put_msg(name, "x-receiver: <a@example.com>\n", NULL);
  }
  forget_victim = "u13";
  spool_test_before_forget = replace_with_dir;
  drain(sp);
  spool_test_before_forget = NULL;
  assert_null(forget_victim); /* the hook ran */
  assert_int_equal(ngot, 24);  /* every message is queued */
  assert_int_equal(count_tombs(), 0);
  assert_int_equal(count_dir("pickup"), 0);
  assert_true(exists("bad/u13"));
  check_why("u13", "not a regular file");
  reset_got();
  spool_close(sp);
}

static int hook_calls;
static int reject_odd(void *arg, struct spool_msg *m, char *why, size_t n)
{
  (void)arg;
  hook_calls++;
  if (strcmp(m->rcpt[0], "odd@example.com") == 0) {
    snprintf(why, n, "policy says no");
    return -1;
  }
  spool_msg_set_binding(m, "from-hook");
  return ctx_set(m->mess, "hooked", "yes");
}

/* The ingest hook (Lua validate_data_spool / set_binding) can change the
 * binding and dictionaries before the metadata is written, or reject. */
static void test_ingest_hook(void **state)
{
  (void)state;
  struct spool_params p = {.on_ingest = reject_odd, .keep_dicts_in_memory = true};
  struct spool *sp = open_spool(&p);
  for (int i = 0; i < 6; i++) {
    char name[16];
    snprintf(name, sizeof(name), "h%d", i);
    put_msg(name, i % 2 ? "x-receiver: <odd@example.com>\n" : "x-receiver: <even@example.com>\n",
            NULL);
  }
  drain(sp);
  assert_int_equal(hook_calls, 6);
  assert_int_equal(ngot, 3);
  check_why("h1", "policy says no");
  reset_got();
  spool_close(sp);
  p.on_ingest = NULL;
  sp = open_spool(&p);
  assert_int_equal(spool_recover(sp), 3);
  for (size_t i = 0; i < ngot; i++) {
    assert_string_equal(got[i]->binding, "from-hook");
    assert_string_equal(ctx_get(got[i]->mess, "hooked"), "yes");
  }
  spool_close(sp);
}

static void test_open_errors(void **state)
{
  (void)state;
  char err[256] = "";
  struct spool_params p = {.spoolbase = "/proc/impetus-nope"};
  assert_null(spool_open(&p, err, sizeof(err)));
  assert_non_null(strstr(err, "/proc/impetus-nope"));
  struct spool_params q = {.spoolbase = base, .pickup_dir = "/dev/shm"};
  if (access("/dev/shm", W_OK) == 0) {
    assert_null(spool_open(&q, err, sizeof(err)));
    assert_non_null(strstr(err, "file system"));
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_good),
      cmocka_unit_test(test_parse_8bit),
      cmocka_unit_test(test_addr),
      cmocka_unit_test(test_scrub_secrets),
      cmocka_unit_test(test_parse_bad),
      cmocka_unit_test(test_id_format),
      cmocka_unit_test_setup_teardown(test_bad_inputs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dup_rcpts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_body_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_names, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journal, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journal_damage, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journal_stamp, setup, teardown),
      cmocka_unit_test_setup_teardown(test_exchange_crash, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pre_buf_sizes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_not_regular, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unremovable_pickup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_modes_ids_and_recovery, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dicts_on_disk, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dicts_dropped_on_defer, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dicts_in_memory, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_modes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_noatime, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ingest_hook, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
