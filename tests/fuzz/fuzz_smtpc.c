/* libFuzzer target: arbitrary server bytes into an smtpc session driven
 * like the net layer would (events answered, output consumed, body fed,
 * timeouts fired). Input: byte 0 picks params; then records of
 * [len byte][that many server bytes]; len 0 = let time pass. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "panic.h"
#include "smtpc.h"

#define PASS "fuzz\xc3\xa9pass"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void drain(struct smtpc *s, uint64_t now)
{
  const uint8_t *p;
  size_t n;
  for (int i = 0; i < 1000 && smtpc_output(s, &p, &n); i++) {
    UTIL_ASSERT(n > 0);
    smtpc_output_consumed(s, n > 7 ? n - 7 : n, now);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2)
    return 0;
  uint8_t cfg = data[0];
  /* the last byte: BDAT (bit 0), its depth (bits 1-3), two chunks (bit 4) */
  uint8_t cfg2 = data[size - 1];
  size--;
  struct smtpc_params p;
  memset(&p, 0, sizeof(p));
  p.ehlo_name = "fuzz.test";
  p.tls = (enum smtpc_tls_mode)(cfg & 3) % 3;
  p.implicit_tls = (cfg & 4) != 0;
  p.auth_allow_plaintext = (cfg & 8) != 0;
  p.auth.type = (enum smtpc_auth_type)((cfg >> 4) & 3);
  p.auth.user = "fuzzuser";
  p.auth.pass = PASS;
  p.send_8bitmime = true;
  p.out_buf_size = (cfg & 0x40) ? 1024 : 0;
  p.chunking = (cfg2 & 1) != 0;
  p.pipeline_depth = (cfg2 >> 1) & 7;
  p.limits.max_lines = 50;
  p.limits.max_line = 600;
  uint64_t now = 1000;
  struct smtpc *s = smtpc_new(&p, now);
  UTIL_ASSERT(s);
  smtpc_connected(s, now);

  static const char *const rcpts[] = {"a@x.test", "b@x.test", "c@x.test"};
  /* a slot per transaction in flight: with PIPELINING the next one starts
   * while the one before waits for its final reply (with BDAT up to
   * SMTPC_PIPE_MAX of them) */
  enum { SLOTS = SMTPC_PIPE_MAX + 1 };
  struct smtpc_result res[SLOTS][3], fin[SLOTS];
  struct smtpc_txn txns[SLOTS];
  bool busy[SLOTS] = {false};
  for (int k = 0; k < SLOTS; k++)
    txns[k] = (struct smtpc_txn){"s@x.test", rcpts, 3, 100, SMTPC_TXN_8BIT, res[k], &fin[k]};
  int ntxn = 0, max_txn = (cfg2 & 1) ? 12 : 3;
  size_t i = 1;
  while (i < size) {
    size_t len = data[i++];
    if (len == 0) {
      now += 400000;
      smtpc_timeout(s, now);
    } else {
      if (len > size - i)
        len = size - i;
      smtpc_feed(s, data + i, len, now);
      i += len;
    }
    drain(s, now);
    struct smtpc_event ev;
    while (smtpc_next_event(s, &ev)) {
      UTIL_ASSERT(ev.text && strlen(ev.text) < SMTPC_TEXT_MAX);
      /* the password holds a non-ASCII byte, which sanitised server text
       * can never contain: finding it means the machine leaked it */
      UTIL_ASSERT(!strstr(ev.text, PASS));
      switch (ev.type) {
      case SMTPC_EV_NEED_TLS:
        smtpc_tls_done(s, (len & 1) == 0, now);
        break;
      case SMTPC_EV_READY:
        /* READY can be stale when a later queued event ended the session */
        if (ntxn < max_txn) {
          enum smtpc_state st = smtpc_state(s);
          int slot = 0;
          while (slot < SLOTS - 1 && busy[slot])
            slot++;
          int got = smtpc_begin_txn(s, &txns[slot], now);
          /* IDLE always takes one; DOT (pipelined READY) may; else busy */
          if (st == SMTPC_ST_IDLE ? got != 0 : st == SMTPC_ST_DOT ? got != 0 && got != -EBUSY
                                                                  : got != -EBUSY)
            util_panic("begin_txn %d in state %s", got, smtpc_state_name(st));
          if (got == 0) {
            ntxn++;
            busy[slot] = true; /* until its TXN_DONE (maybe already queued) */
          }
        } else if (!(ev.flags & SMTPC_F_PIPELINED)) {
          ntxn++;
          smtpc_quit(s, now);
        }
        break;
      case SMTPC_EV_NEED_BODY: {
        static const char body[] = "Subject: x\r\n\r\n.dot\nbare\rcr\r\n";
        bool in_body = smtpc_state(s) == SMTPC_ST_BODY;
        if (!smtpc_chunked(s)) {
          long k = smtpc_body(s, body, sizeof(body) - 1, true, now);
          UTIL_ASSERT(in_body ? k >= 0 : k == -EINVAL);
          break;
        }
        /* BDAT: the driver would send each chunk's bytes after the line */
        size_t parts[2] = {(cfg2 & 0x10) ? 5 : sizeof(body) - 1, sizeof(body) - 6};
        for (int c = 0; c < ((cfg2 & 0x10) ? 2 : 1); c++) {
          bool last = !(cfg2 & 0x10) || c == 1;
          int r = smtpc_chunk(s, parts[c], last, now);
          if (r == -ENOSPC) {
            drain(s, now);
            r = smtpc_chunk(s, parts[c], last, now);
          }
          UTIL_ASSERT(r == 0 || r == -ECANCELED || (!in_body && r == -EINVAL));
          if (r != 0)
            break;
          drain(s, now);
        }
        break;
      }
      case SMTPC_EV_TXN_DONE: {
        int k = 0;
        while (k < SLOTS && ev.final != &fin[k])
          k++;
        UTIL_ASSERT(k < SLOTS && busy[k]);
        busy[k] = false;
        const struct smtpc_txn *t = &txns[k];
        for (int r = 0; r < 3; r++)
          UTIL_ASSERT(smtpc_txn_outcome(t, (uint32_t)r)->outcome != SMTPC_OUT_NONE);
        break;
      }
      default:
        break;
      }
    }
    drain(s, now);
  }
  smtpc_eof(s, now);
  smtpc_free(s);
  return 0;
}
