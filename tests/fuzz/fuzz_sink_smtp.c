/* Fuzz target for impetus-sink's protocol module: arbitrary client bytes,
 * in arbitrary chunks, under option sets chosen by the first input byte.
 * Must never crash, leak or read out of bounds. */
#include <stddef.h>
#include <stdint.h>

#include "../unit/sink_stubs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char u_name[] = "alice", u_pass[] = "s3cret";
static struct sink_user users[] = {{u_name, u_pass, NULL}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2)
    return 0;
  uint8_t opt = data[0], step = data[1];
  data += 2;
  size -= 2;
  memset(&g_sink, 0, sizeof(g_sink));
  g_sink.o.hostname = "fuzz.test";
  g_sink.o.max_size = opt & 1 ? 100 : 1000000;
  g_sink.o.max_rcpts = 5;
  g_sink.o.auth_mechs = AUTH_PLAIN | AUTH_LOGIN | AUTH_XOAUTH2;
  g_sink.o.disconnect_at = opt & 2 ? CMD_RCPT : -1;
  g_sink.o.require_auth = (opt & 4) != 0;
  g_sink.o.require_tls_for_auth = (opt & 8) != 0;
  g_sink.o.save_dir = opt & 16 ? "x" : NULL;
  g_sink.o.latency_ms[CMD_MAIL] = opt & 32 ? 1 : 0;
  g_sink.o.latency_ms[CMD_BDAT] = opt & 32 ? 1 : 0;
  g_sink.o.fail[CMD_DOT] = (struct sink_fail){5, opt & 64 ? 1.0 : 0.0};
  g_sink.o.fail[CMD_BDAT] = (struct sink_fail){4, opt & 64 ? 1.0 : 0.0};
  g_sink.o.no_chunking = step == 255;
  g_sink.o.hostile = opt & 128 ? HOSTILE_CONTINUATIONS : HOSTILE_NONE;
  g_sink.o.hostile_stage = CMD_EHLO;
  g_sink.o.users = users;
  g_sink.o.nusers = 1;
  g_sink.greeting_len = (size_t)snprintf(g_sink.greeting, sizeof(g_sink.greeting), "220 x\r\n");
  struct sink_conn c;
  memset(&c, 0, sizeof(c));
  sink_smtp_start(&c);
  size_t chunk = step ? step : size;
  for (size_t off = 0; off < size && !c.closing;) {
    size_t k = chunk < size - off ? chunk : size - off;
    sink_smtp_feed(&c, data + off, k);
    while (c.paused && !c.closing)
      sink_smtp_resume(&c);
    off += k;
    buf_reset(&stub_out);
  }
  stub_conn_done(&c);
  /* stub_out keeps its capacity (at most SINK_MAX_OUTBUF) across inputs:
   * growing it again for every input was most of the time per execution. */
  buf_reset(&stub_out);
  buf_done(&stub_last_body, 0);
  free(stub_counter);
  stub_counter = NULL;
  return 0;
}
