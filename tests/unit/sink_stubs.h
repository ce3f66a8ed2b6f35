/* sink_stubs.h: stand-ins for sink_io.c and sink_main.c so sink_smtp.c can
 * be driven byte by byte (unit test and fuzz target). Replies collect in
 * stub_out; accepted messages' bodies in stub_last_body. */
#pragma once
#include <stdlib.h>
#include <string.h>

#include "sink.h"

struct sink g_sink;
static struct buf stub_out;
static struct buf stub_last_body;
static uint64_t stub_msgs;
static uint32_t stub_pause_ms;
static double stub_rand_value = 0.99;
static struct sink_counter *stub_counter;

double sink_rand(void) { return stub_rand_value; }
uint64_t sink_record_message(struct sink_conn *c)
{
  buf_reset(&stub_last_body);
  buf_append(&stub_last_body, buf_head(&c->msg), buf_avail(&c->msg));
  return ++stub_msgs;
}
struct sink_counter *sink_table_get(struct sink_table *t, const char *key)
{
  (void)t;
  (void)key;
  if (!stub_counter)
    stub_counter = calloc(1, sizeof(*stub_counter) + 1);
  return stub_counter;
}
void sink_conn_reply(struct sink_conn *c, const void *p, size_t n)
{
  /* As sink_io: replies beyond SINK_MAX_OUTBUF unsent bytes drop the client. */
  if (buf_avail(&stub_out) + n > SINK_MAX_OUTBUF) {
    c->closing = 1;
    return;
  }
  buf_append(&stub_out, p, n);
}
void sink_conn_pause(struct sink_conn *c, uint32_t ms)
{
  c->paused = 1;
  stub_pause_ms = ms;
}
void sink_conn_close_after_send(struct sink_conn *c) { c->close_after_send = 1; }
void sink_conn_close(struct sink_conn *c, int reset)
{
  c->closing = 1;
  c->reset_on_close = reset ? 1 : 0;
}
int sink_conn_start_tls(struct sink_conn *c)
{
  c->tls_active = 1;
  return 0;
}
void sink_conn_start_endless(struct sink_conn *c) { c->endless_left = 1; }

static void stub_conn_done(struct sink_conn *c)
{
  sink_smtp_done(c);
  buf_done(&c->in, 0);
  buf_done(&c->env, 0);
  buf_done(&c->msg, 0);
  memset(c, 0, sizeof(*c));
}
