/* Transcript harness for smtpc tests: server bytes in, client bytes and
 * events out. Every scenario runs (1) with each server write fed whole,
 * (2) byte by byte, and (3) once per byte position of the whole server
 * stream, split into two feeds there. Included by test_smtpc*.c only. */
#pragma once

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "smtpc.h"

enum tr_mode { TR_WHOLE, TR_BYTES, TR_SPLIT };

struct tr {
  struct smtpc *s;
  uint64_t now;
  enum tr_mode mode;
  size_t split_at; /* TR_SPLIT: absolute position in the server stream */
  size_t pos;      /* server bytes fed so far */
  struct smtpc_event last;
  char evs[1024];
};

static void tr_ctx_fail(const struct tr *t, const char *what, const char *got, const char *want)
{
  print_message("transcript mismatch (%s) mode=%d split_at=%zu\n  got:  %s\n  want: %s\n", what,
                (int)t->mode, t->split_at, got, want);
  fail();
}

/* Escape CR/LF etc. so mismatches read well. */
static void tr_escape(char *dst, size_t cap, const uint8_t *p, size_t n)
{
  size_t o = 0;
  for (size_t i = 0; i < n && o + 5 < cap; i++) {
    uint8_t c = p[i];
    if (c == '\r') { dst[o++] = '\\'; dst[o++] = 'r'; }
    else if (c == '\n') { dst[o++] = '\\'; dst[o++] = 'n'; }
    else if (c < 0x20 || c >= 0x7f) o += (size_t)snprintf(dst + o, cap - o, "\\x%02X", c);
    else dst[o++] = (char)c;
  }
  dst[o] = '\0';
}

static void tr_feed_raw(struct tr *t, const void *p, size_t n)
{
  if (n == 0)
    return;
  int r = smtpc_feed(t->s, p, n, t->now);
  assert_true(r == (int)n || r == -EPIPE);
}

/* The server writes n bytes. */
static void srvn(struct tr *t, const void *bytes, size_t n)
{
  const uint8_t *p = bytes;
  switch (t->mode) {
  case TR_WHOLE:
    tr_feed_raw(t, p, n);
    break;
  case TR_BYTES:
    for (size_t i = 0; i < n; i++)
      tr_feed_raw(t, p + i, 1);
    break;
  case TR_SPLIT:
    if (t->split_at > t->pos && t->split_at < t->pos + n) {
      size_t k = t->split_at - t->pos;
      tr_feed_raw(t, p, k);
      tr_feed_raw(t, p + k, n - k);
    } else
      tr_feed_raw(t, p, n);
    break;
  }
  t->pos += n;
}

static void srv(struct tr *t, const char *bytes) { srvn(t, bytes, strlen(bytes)); }

/* Everything the client has to send now, exactly. */
static void cli(struct tr *t, const char *want)
{
  static uint8_t got[1 << 20];
  size_t n = 0;
  const uint8_t *p;
  size_t k;
  while (smtpc_output(t->s, &p, &k)) {
    assert_true(n + k <= sizeof(got));
    memcpy(got + n, p, k);
    n += k;
    smtpc_output_consumed(t->s, k, t->now);
  }
  if (n != strlen(want) || memcmp(got, want, n) != 0) {
    static char a[8192], b[8192];
    tr_escape(a, sizeof(a), got, n);
    tr_escape(b, sizeof(b), (const uint8_t *)want, strlen(want));
    tr_ctx_fail(t, "client bytes", a, b);
  }
}

static const char *tr_outcome(enum smtpc_outcome o)
{
  switch (o) {
  case SMTPC_OUT_NONE: return "NONE";
  case SMTPC_OUT_OK: return "OK";
  case SMTPC_OUT_TRANSIENT: return "TRANSIENT";
  case SMTPC_OUT_PERMANENT: return "PERMANENT";
  default: return "?";
  }
}

static void tr_fmt_event(char *buf, size_t cap, const struct smtpc_event *e)
{
  switch (e->type) {
  case SMTPC_EV_RCPT_RESULT:
    snprintf(buf, cap, "RCPT_RESULT %u %d %s st=%u: %s", e->index, e->code, e->enhanced,
             e->stage, e->text);
    break;
  case SMTPC_EV_TXN_DONE:
  case SMTPC_EV_AUTH_RESULT:
    snprintf(buf, cap, "%s %d %s st=%u: %s", smtpc_ev_name(e->type), e->code, e->enhanced,
             e->stage, e->text);
    break;
  case SMTPC_EV_FAILED:
    snprintf(buf, cap, "FAILED %s %d %s f=%x st=%u: %s", smtpc_fail_name(e->kind), e->code,
             e->enhanced, e->flags, e->stage, e->text);
    break;
  case SMTPC_EV_READY:
    snprintf(buf, cap, "%s", (e->flags & SMTPC_F_PIPELINED) ? "READY pipelined" : "READY");
    break;
  default:
    snprintf(buf, cap, "%s", smtpc_ev_name(e->type));
    break;
  }
}

/* The next event, formatted, equals want (or starts with it when want
 * ends in '*'). */
static void ev(struct tr *t, const char *want)
{
  struct smtpc_event e;
  if (!smtpc_next_event(t->s, &e))
    tr_ctx_fail(t, "event", "(none)", want);
  t->last = e;
  tr_fmt_event(t->evs, sizeof(t->evs), &e);
  size_t wl = strlen(want);
  bool ok = (wl && want[wl - 1] == '*') ? strncmp(t->evs, want, wl - 1) == 0
                                          : strcmp(t->evs, want) == 0;
  if (!ok)
    tr_ctx_fail(t, "event", t->evs, want);
}

static void no_ev(struct tr *t)
{
  struct smtpc_event e;
  if (smtpc_next_event(t->s, &e)) {
    tr_fmt_event(t->evs, sizeof(t->evs), &e);
    tr_ctx_fail(t, "no event expected", t->evs, "(none)");
  }
}

/* A result slot, formatted like an event. */
static void res(struct tr *t, const struct smtpc_result *r, const char *want)
{
  char buf[1024];
  snprintf(buf, sizeof(buf), "%s %d %s st=%u: %s", tr_outcome(r->outcome), r->code, r->enhanced,
           r->stage, r->text);
  size_t wl = strlen(want);
  bool ok = (wl && want[wl - 1] == '*') ? strncmp(buf, want, wl - 1) == 0 : strcmp(buf, want) == 0;
  if (!ok)
    tr_ctx_fail(t, "result", buf, want);
}

typedef void (*tr_scenario)(struct tr *t);

/* Run a scenario whole, byte by byte, and split at every position. */
static void tr_run(tr_scenario f)
{
  struct tr t;
  memset(&t, 0, sizeof(t));
  t.mode = TR_WHOLE;
  t.now = 1000000;
  f(&t);
  smtpc_free(t.s);
  size_t total = t.pos;

  memset(&t, 0, sizeof(t));
  t.mode = TR_BYTES;
  t.now = 1000000;
  f(&t);
  smtpc_free(t.s);

  for (size_t k = 1; k < total; k++) {
    memset(&t, 0, sizeof(t));
    t.mode = TR_SPLIT;
    t.split_at = k;
    t.now = 1000000;
    f(&t);
    smtpc_free(t.s);
  }
}

#define TR_TEST(name) \
  static void name(struct tr *t); \
  static void run_##name(void **state) { (void)state; tr_run(name); } \
  static void name(struct tr *t)
