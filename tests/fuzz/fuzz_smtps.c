/* Fuzz target for the SMTP server core (smtps): arbitrary client bytes in
 * arbitrary slices, under parameter sets chosen by the first input byte,
 * with decisions answered now, refused, or held and answered later, as the
 * engine's listener does while a message waits for its group commit.
 * Must never crash, leak, read out of bounds or break the contract (feed
 * consumes nothing while a reply is due). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtps.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void answer(struct smtps *s, const struct smtps_event *ev, uint8_t how)
{
  switch (how % 4) {
  case 0:
    smtps_accept(s, 0);
    break;
  case 1:
    smtps_answer(s, ev->type == SMTPS_EV_AUTH ? 235 : 250, "2.0.0 yes", 0);
    break;
  case 2:
    smtps_answer(s, 451, "4.3.0 no", 0);
    break;
  default:
    smtps_answer_raw(s, true, "250 raw\r\n", 9, 0);
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 3)
    return 0;
  uint8_t opt = data[0], step = data[1], how = data[2];
  data += 3;
  size -= 3;
  struct smtps_params p = {
    .hostname = "fuzz.test",
    .ext = opt & 1 ? SMTPS_EXT_ALL : (SMTPS_EXT_PIPELINING | SMTPS_EXT_CHUNKING),
    .auth_mechs = SMTPS_AUTH_PLAIN | SMTPS_AUTH_LOGIN | SMTPS_AUTH_XOAUTH2,
    .auth_tls_only = (opt & 2) != 0,
    .require_auth = (opt & 4) != 0,
    .strict = (opt & 8) != 0,
    .limits = {.max_line = opt & 16 ? 64 : 0, .max_rcpts = 5, .max_size = opt & 32 ? 100 : 0,
               .max_errors = opt & 64 ? 20 : 0, .max_pending_out = opt & 128 ? 256 : 0},
  };
  struct smtps *s = smtps_new(&p);
  if (!s)
    return 0;
  smtps_start(s, 0);
  size_t chunk = step ? step : size;
  size_t off = 0;
  uint64_t now = 0;
  int held = 0;
  struct smtps_event ev;
  for (int guard = 0; guard < 100000 && !smtps_done(s); guard++) {
    if (smtps_want_tls(s))
      smtps_tls_done(s, now);
    size_t k = 0;
    if (off < size) {
      size_t n = chunk < size - off ? chunk : size - off;
      k = smtps_feed(s, data + off, n, now);
      if (smtps_pending(s) && !held && k)
        ; /* feed stops at a due reply; it may have consumed before it */
      off += k;
    }
    bool any = false;
    while (smtps_event(s, &ev)) {
      any = true;
      if (ev.type == SMTPS_EV_COMMAND || ev.type == SMTPS_EV_AUTH || ev.type == SMTPS_EV_MESSAGE) {
        if (ev.type == SMTPS_EV_MESSAGE && (how & 4) && !held) {
          held = 1; /* answered on the next round, after a feed that must eat nothing */
          break;
        }
        answer(s, &ev, how);
        how = (uint8_t)(how * 37 + 11);
      }
    }
    if (held) {
      if (off < size && smtps_feed(s, data + off, size - off, now) != 0)
        abort();
      answer(s, &ev, how);
      held = 0;
      any = true;
    }
    const uint8_t *o;
    size_t n;
    while (smtps_output(s, &o, &n))
      smtps_output_consumed(s, n);
    now += 1000;
    if (!any && k == 0 && off >= size)
      break;
    if (!any && k == 0) {
      if (smtps_timeout(s, UINT64_MAX - 1))
        break;
    }
  }
  smtps_free(s);
  return 0;
}
