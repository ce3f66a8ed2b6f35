/* Unit tests for signing off the ingest thread (src/engine/spool/signq.c,
 * on_sign_prep / on_sign_async): a message to sign leaves the batch and
 * stays claimed while its group is out; the others are committed and
 * handed over meanwhile; once spool_sign_done is called, the next round
 * writes the held messages with their header fields in front, exactly
 * once, and they survive a restart with them. Works under /tmp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "buf.h"
#include "spool.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char base[256];
static struct spool_msg *got[64];
static size_t ngot;
static struct spool_sign_group *held;
static struct spool_sign_job *held_jobs;
static size_t held_n, groups;

static void on_msg(void *arg, struct spool_msg *m)
{
  (void)arg;
  assert_true(ngot < 64);
  got[ngot++] = m;
}

/* Messages whose body says SIGNME are signed. */
static bool prep(void *arg, struct spool_msg *msg, const uint8_t *body, size_t len,
                 struct buf *hdr)
{
  (void)arg;
  (void)msg;
  (void)hdr;
  return memmem(body, len, "SIGNME", 6) != NULL;
}

/* The signers: hold the group until the test lets it go. */
static void async(void *arg, struct spool_sign_job *jobs, size_t n, struct spool_sign_group *g)
{
  (void)arg;
  held = g;
  held_jobs = jobs;
  held_n = n;
  groups++;
}

static void put_msg(const char *name, const char *body)
{
  char path[512], tmp[512];
  snprintf(tmp, sizeof(tmp), "%s/.%s", base, name);
  snprintf(path, sizeof(path), "%s/pickup/%s", base, name);
  FILE *f = fopen(tmp, "wb");
  assert_non_null(f);
  fprintf(f, "x-sender: <s@example.com>\nx-receiver: <r@example.net>\nSubject: %s\n\n%s\n", name,
          body);
  fclose(f);
  assert_int_equal(rename(tmp, path), 0);
}

static bool exchange; /* Pickup_Claim = exchange */

/* Claimed pickup files: tombs in pickup/, or (exchange) the files in the
 * claimed directory. */
static size_t tombs(void)
{
  char path[512];
  snprintf(path, sizeof(path), exchange ? "%s/claim/pickup" : "%s/pickup", base);
  DIR *d = opendir(path);
  assert_non_null(d);
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    n += exchange ? de->d_name[0] != '.' : !strncmp(de->d_name, ".c.", 3);
  closedir(d);
  return n;
}

static struct spool *open_spool(void)
{
  struct spool_params p = {.spoolbase = base, .on_msg = on_msg, .sync = SPOOL_SYNC_NONE,
                           .on_sign_prep = prep, .on_sign_async = async,
                           .pickup_exchange = exchange};
  char err[256];
  struct spool *sp = spool_open(&p, err, sizeof(err));
  if (!sp)
    fail_msg("spool_open: %s", err);
  return sp;
}

/* Ingest rounds until two in a row take nothing. */
static void drain(struct spool *sp)
{
  for (int i = 0; i < 100; i++) {
    long r = spool_ingest(sp, 0);
    assert_true(r >= 0);
    if (r == 0 && spool_ingest(sp, 0) == 0)
      return;
  }
  fail_msg("ingest did not settle");
}

/* The stored message of m (its first n bytes) into out. */
static void stored(struct spool *sp, const struct spool_msg *m, char *out, size_t n)
{
  int fd = spool_open_body(sp, m);
  assert_true(fd >= 0);
  ssize_t got_n = pread(fd, out, n - 1, (off_t)m->body_off);
  spool_close_body(sp, fd);
  assert_true(got_n > 0);
  out[got_n] = 0;
}

static const struct spool_msg *by_subject(struct spool *sp, const char *subj, char *text,
                                          size_t n)
{
  for (size_t i = 0; i < ngot; i++) {
    stored(sp, got[i], text, n);
    if (strstr(text, subj))
      return got[i];
  }
  return NULL;
}

static void test_held_group(void **state)
{
  (void)state;
  struct spool *sp = open_spool();
  put_msg("plain1", "not signed");
  put_msg("sign1", "SIGNME one");
  put_msg("sign2", "SIGNME two");
  put_msg("plain2", "not signed either");
  drain(sp);
  /* the unsigned ones are committed and handed over; the others wait */
  assert_int_equal(ngot, 2);
  assert_int_equal(groups, 1);
  assert_int_equal(held_n, 2);
  assert_int_equal(tombs(), 2);
  char text[4096];
  assert_non_null(by_subject(sp, "plain1", text, sizeof(text)));
  assert_non_null(by_subject(sp, "plain2", text, sizeof(text)));
  for (size_t i = 0; i < held_n; i++) {
    assert_non_null(memmem(held_jobs[i].body, held_jobs[i].len, "SIGNME", 6));
    buf_append(held_jobs[i].hdr, "X-Test-Sig: yes\r\n", 17);
  }
  spool_sign_done(held);
  assert_true(spool_ingest(sp, 0) == 2); /* woken by the done group, nothing else to list */
  drain(sp);
  assert_int_equal(ngot, 4);
  assert_int_equal(tombs(), 0);
  static const char *const signed_ones[] = {"sign1", "sign2"};
  for (size_t k = 0; k < 2; k++) {
    const struct spool_msg *m = by_subject(sp, signed_ones[k], text, sizeof(text));
    if (!m) {
      fail_msg("%s not handed over", signed_ones[k]);
      return;
    }
    assert_true(!strncmp(text, "X-Test-Sig: yes\r\nSubject: ", 26));
    const uint8_t *mem = m->body_mem;
    if (!mem) {
      fail_msg("%s not kept in memory", signed_ones[k]);
      return;
    }
    assert_true(!memcmp(mem, "X-Test-Sig: yes\r\n", 17));
  }
  by_subject(sp, "plain1", text, sizeof(text));
  assert_null(strstr(text, "X-Test-Sig"));
  for (size_t i = 0; i < ngot; i++)
    spool_msg_free(got[i]);
  ngot = 0;
  spool_close(sp);

  /* a restart finds all four, each once, the signed ones with their field */
  sp = open_spool();
  assert_int_equal(spool_recover(sp), 4);
  assert_int_equal(ngot, 4);
  size_t sigs = 0;
  for (size_t i = 0; i < ngot; i++) {
    stored(sp, got[i], text, sizeof(text));
    sigs += !strncmp(text, "X-Test-Sig: yes\r\n", 17);
  }
  assert_int_equal(sigs, 2);
  drain(sp);
  assert_int_equal(ngot, 4);
  assert_int_equal(groups, 1);
  for (size_t i = 0; i < ngot; i++)
    spool_msg_free(got[i]);
  ngot = 0;
  spool_close(sp);
}

/* The same with Pickup_Claim = exchange: the held files stay in the
 * claimed directory under their names, which is neither listed nor
 * exchanged again until they are written (else they would be taken
 * twice). */
static void test_held_group_exchange(void **state)
{
  exchange = true;
  test_held_group(state);
  exchange = false;
}

static int setup(void **state)
{
  (void)state;
  snprintf(base, sizeof(base), "/tmp/impetus-test-signq-XXXXXX");
  if (!mkdtemp(base))
    return -1;
  ngot = held_n = groups = 0;
  held = NULL;
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_held_group, setup, teardown),
    cmocka_unit_test_setup_teardown(test_held_group_exchange, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
