/* Unit tests for logs: Momentum record formats byte-exact (the documented
 * D example reproduced), sanitising of remote text, JSON lines, reopen
 * after rotation, and many threads logging at once (no torn lines). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "logs.h"

static char dir[64];
static char p_main[128], p_panic[128], p_bounce[128], p_json[128];

static int setup(void **state)
{
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/impetus-test-logs-XXXXXX");
  if (!mkdtemp(dir))
    return -1;
  snprintf(p_main, sizeof p_main, "%s/mainlog.ec", dir);
  snprintf(p_panic, sizeof p_panic, "%s/paniclog.ec", dir);
  snprintf(p_bounce, sizeof p_bounce, "%s/bouncelog.ec", dir);
  snprintf(p_json, sizeof p_json, "%s/events.jsonl", dir);
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static char *slurp(const char *path)
{
  FILE *f = fopen(path, "r");
  if (!f)
    return strdup("");
  static char tmp[1 << 20];
  size_t n = fread(tmp, 1, sizeof tmp - 1, f);
  tmp[n] = '\0';
  fclose(f);
  return strdup(tmp);
}

static struct logs *open_all(bool hires)
{
  unlink(p_main);
  unlink(p_panic);
  unlink(p_bounce);
  unlink(p_json);
  struct logs_config c = {.mainlog = p_main, .paniclog = p_panic, .bouncelog = p_bounce,
                          .jsonlog = p_json, .hires = hires};
  char err[256];
  struct logs *l = logs_open(&c, err, sizeof err);
  assert_non_null(l);
  return l;
}

/* The documented Momentum D example, reproduced from its fields. */
static void test_delivery_example(void **state)
{
  (void)state;
  struct logs *l = open_all(false);
  struct logs_writer *w = logs_writer_new(l);
  struct logs_msg m = {.msgid = "20/00-25593-945A87F3", .batchid = "00/00-03736-F4101B54",
                       .rcpt = "someone@postalengine.com", .sender = "me@example.com",
                       .binding_group = "group-a", .binding = "binding-a", .size = 266,
                       .received_ms = 1064871280107ULL};
  struct logs_attempt a = {.conn_id = "00/00-04532-A3456B54", .remote_ip = "10.0.0.1"};
  logs_delivery(w, 1064871280500ULL, &m, &a);
  logs_writer_flush(w);
  logs_sync(l);
  char *s = slurp(p_main);
  assert_string_equal(s, "1064871280@20/00-25593-945A87F3@00/00-03736-F4101B54@"
                         "00/00-04532-A3456B54@D@postalengine.com@266@group-a@binding-a@0@"
                         "0.393@10.0.0.1\n");
  free(s);
  logs_writer_free(w);
  logs_close(l);
}

static void test_records(void **state)
{
  (void)state;
  struct logs *l = open_all(false);
  struct logs_writer *w = logs_writer_new(l);
  struct logs_msg m = {.msgid = "ABC.1", .batchid = "ABC", .rcpt = "bob@example.org",
                       .sender = "alice@example.com", .binding_group = "", .binding = "default",
                       .size = 1024, .received_ms = 1700000000000ULL};
  logs_reception(w, 1700000000000ULL, &m, NULL, NULL);
  struct logs_attempt t = {.conn_id = "7", .remote_ip = "127.0.0.1", .retries = 0, .stage = 4,
                           .bytes_sent = 120,
                           .text = "451-4.3.0 try\r\n451 4.3.0 later\r\n"};
  logs_transient(w, 1700000001250ULL, &m, &t);
  struct logs_attempt p = {.conn_id = "8", .remote_ip = "127.0.0.1", .retries = 1, .stage = 4,
                           .bytes_sent = 120, .text = "550 5.1.1 <bob@example.org>: no such user",
                           .bounce_class = logs_bounce_class(550, "5.1.1")};
  logs_permanent(w, 1700000061000ULL, &m, &p);
  logs_bounce(w, 1700000061000ULL, &m, &p);
  struct logs_attempt x = {.stage = 21, .text = "554 5.4.7 [internal] exceeded max time without delivery",
                           .retries = 9, .bounce_class = logs_bounce_class(554, "5.4.7")};
  logs_bounce(w, 1700086400000ULL, &m, &x);
  logs_heartbeat(w, 1700086460000ULL);
  logs_panic(w, 1700000000000ULL, "spool", "bad file %s: %s", "x\ny", "no x-sender");
  logs_writer_flush(w);
  logs_sync(l);
  char *s = slurp(p_main);
  assert_string_equal(s,
    "1700000000@ABC.1@ABC@@R@bob@example.org@alice@example.com@unknown@1024@internal@@default\n"
    "1700000001@ABC.1@ABC@7@T@example.org@120@@default@4@0@1.250@127.0.0.1@451-4.3.0 try 451 4.3.0 later\n"
    "1700000061@ABC.1@ABC@8@P@example.org@120@@default@4@1@61.000@127.0.0.1@550 5.1.1 <bob@example.org>: no such user\n"
    "1700086460@@@@M\n");
  free(s);
  s = slurp(p_bounce);
  assert_string_equal(s,
    "1700000061@ABC.1@ABC@8@B@bob@example.org@alice@example.com@@default@4@10@1024@127.0.0.1@550 5.1.1 <bob@example.org>: no such user\n"
    "1700086400@ABC.1@ABC@@B@bob@example.org@alice@example.com@@default@21@24@1024@@554 5.4.7 [internal] exceeded max time without delivery\n"
    "1700086460@@@@M1\n");
  free(s);
  s = slurp(p_panic);
  assert_string_equal(s, "1700000000:spool: bad file x y: no x-sender\n");
  free(s);
  s = slurp(p_json);
  assert_non_null(strstr(s, "{\"ts\":1700000000.000,\"type\":\"R\",\"msgid\":\"ABC.1\",\"batchid\":\"ABC\","
                            "\"rcpt\":\"bob@example.org\",\"sender\":\"alice@example.com\""));
  assert_non_null(strstr(s, "\"type\":\"T\""));
  assert_non_null(strstr(s, "\"text\":\"451-4.3.0 try 451 4.3.0 later\""));
  assert_non_null(strstr(s, "\"type\":\"B\""));
  assert_non_null(strstr(s, "\"class\":24"));
  /* one object per line */
  int lines = 0;
  for (char *q = s; *q; q++)
    lines += *q == '\n';
  assert_int_equal(lines, 5);
  free(s);
  logs_writer_free(w);
  logs_close(l);
}

static void test_sanitise(void **state)
{
  (void)state;
  char out[16];
  assert_int_equal(logs_sanitise(out, sizeof out, "a@b\r\n\tc\x01\xff", false), 7);
  assert_string_equal(out, "a_b c ?");
  logs_sanitise(out, sizeof out, "a@b", true);
  assert_string_equal(out, "a@b");
  logs_sanitise(out, sizeof out, "0123456789abcdefghij", true);
  assert_string_equal(out, "0123456789abcde"); /* cut */
  logs_sanitise(out, sizeof out, NULL, true);
  assert_string_equal(out, "");

  /* hostile remote text in a record: no extra line, no field split */
  struct logs *l = open_all(false);
  struct logs_writer *w = logs_writer_new(l);
  char big[4000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  big[10] = '\n';
  struct logs_msg m = {.msgid = "a@b.0", .batchid = "a\nb", .rcpt = "r@d", .binding = "b@1"};
  struct logs_attempt a = {.text = big};
  logs_transient(w, 1000, &m, &a);
  logs_writer_flush(w);
  logs_sync(l);
  char *s = slurp(p_main);
  static const char want[] = "1@a_b.0@a b@@T@d@0@@b_1@0@0@1.000@@xxxxxxxxxx xxx";
  assert_true(strncmp(s, want, strlen(want)) == 0);
  int lines = 0;
  for (char *q = s; *q; q++)
    lines += *q == '\n';
  assert_int_equal(lines, 1);
  assert_true(strlen(s) < 200 + LOGS_TEXT_MAX);
  free(s);
  logs_writer_free(w);
  logs_close(l);
}

static void test_hires_and_reopen(void **state)
{
  (void)state;
  struct logs *l = open_all(true);
  struct logs_writer *w = logs_writer_new(l);
  logs_heartbeat(w, 1700000000123ULL);
  logs_writer_flush(w);
  logs_sync(l);
  char rotated[160];
  snprintf(rotated, sizeof rotated, "%s.1", p_main);
  assert_int_equal(rename(p_main, rotated), 0);
  logs_reopen(l);
  logs_sync(l); /* the reopen happens before the next write */
  logs_heartbeat(w, 1700000001000ULL);
  logs_writer_flush(w);
  logs_sync(l);
  char *s = slurp(rotated);
  assert_string_equal(s, "1700000000123000@@@@M\n");
  free(s);
  s = slurp(p_main);
  assert_string_equal(s, "1700000001000000@@@@M\n");
  free(s);
  logs_writer_free(w);
  logs_close(l);
  unlink(rotated);
}

#define THREADS 4
#define PER_THREAD 20000
static struct logs *shared;

static void *logger(void *arg)
{
  unsigned id = (unsigned)(uintptr_t)arg;
  struct logs_writer *w = logs_writer_new(shared);
  char msgid[32];
  for (unsigned i = 0; i < PER_THREAD; i++) {
    snprintf(msgid, sizeof msgid, "T%u.%u", id, i);
    struct logs_msg m = {.msgid = msgid, .batchid = "B", .rcpt = "x@example.com", .binding = "default",
                         .size = 1000};
    struct logs_attempt a = {.remote_ip = "127.0.0.1"};
    logs_delivery(w, 5000, &m, &a);
    if (i % 100 == 99)
      logs_writer_flush(w); /* an event-loop iteration */
  }
  logs_writer_free(w);
  return NULL;
}

static void test_threads(void **state)
{
  (void)state;
  shared = open_all(false);
  pthread_t t[THREADS];
  for (unsigned i = 0; i < THREADS; i++)
    pthread_create(&t[i], NULL, logger, (void *)(uintptr_t)i);
  for (unsigned i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  logs_close(shared);
  FILE *f = fopen(p_main, "r");
  assert_non_null(f);
  char line[256];
  unsigned n = 0;
  unsigned next[THREADS] = {0};
  while (fgets(line, sizeof line, f)) {
    unsigned id, seq;
    assert_int_equal(sscanf(line, "5@T%u.%u@B@@D@example.com@1000@@default@0@0.000@127.0.0.1\n", &id, &seq), 2);
    assert_true(id < THREADS);
    assert_int_equal(seq, next[id]); /* each thread's records in order */
    next[id]++;
    n++;
  }
  fclose(f);
  assert_int_equal(n, THREADS * PER_THREAD);
}

static void test_open_failure(void **state)
{
  (void)state;
  struct logs_config c = {.mainlog = "/nonexistent-dir/x/mainlog"};
  char err[256] = "";
  assert_null(logs_open(&c, err, sizeof err));
  assert_non_null(strstr(err, "/nonexistent-dir/x/mainlog: "));
  logs_close(NULL);
  logs_writer_free(NULL);
}

static void test_bounce_class(void **state)
{
  (void)state;
  assert_int_equal(logs_bounce_class(550, "5.1.1"), 10);
  assert_int_equal(logs_bounce_class(552, "5.2.2"), 22);
  assert_int_equal(logs_bounce_class(554, "5.4.7"), 24);
  assert_int_equal(logs_bounce_class(554, "5.7.1"), 50);
  assert_int_equal(logs_bounce_class(451, "4.3.0"), 70);
  assert_int_equal(logs_bounce_class(421, NULL), 70);
  assert_int_equal(logs_bounce_class(550, NULL), 10);
  assert_int_equal(logs_bounce_class(500, NULL), 1);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_delivery_example),
    cmocka_unit_test(test_records),
    cmocka_unit_test(test_sanitise),
    cmocka_unit_test(test_hires_and_reopen),
    cmocka_unit_test(test_threads),
    cmocka_unit_test(test_open_failure),
    cmocka_unit_test(test_bounce_class),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
