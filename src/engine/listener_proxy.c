/* listener_proxy.c owns Proxy_Protocol: the HAProxy PROXY header a load
 * balancer sends before the SMTP session (version 1, one text line;
 * version 2, binary; told apart by the first byte), and what a session
 * waiting for it does with its first bytes: adopt the client address the
 * header reports (LOCAL, UNKNOWN and non-IP families keep the real one),
 * then start the SMTP session; a malformed header closes the connection
 * with a paniclog line and no banner.
 * The parser (listener_proxy_parse) is sans-I/O; lsn_proxy_input runs on the
 * listener thread. Never reads past the bytes it is given; never holds
 * more than LSN_PP_MAX bytes of a header. */
#include "listener.h"
#include "listener_int.h"

#include "logs.h"
#include "panic.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LSN_PP_V1_MAX 107  /* the spec's longest version 1 line, CRLF included */
#define LSN_PP_MAX 4096    /* named limit: a version 2 header with its TLVs */

static const uint8_t v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int bad(const char **why, const char *text)
{
  *why = text;
  return -EBADMSG;
}

/* "a b c" -> up to 6 words of line[0..n) (no CRLF). */
static size_t words(char *line, char **w, size_t max)
{
  size_t k = 0;
  char *save = NULL;
  for (char *p = strtok_r(line, " ", &save); p && k < max; p = strtok_r(NULL, " ", &save))
    w[k++] = p;
  return k;
}

static bool port_of(const char *s, uint16_t *port)
{
  char *end;
  if (!*s || (s[0] == '0' && s[1]))
    return false;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > 65535)
    return false;
  *port = (uint16_t)v;
  return true;
}

static int parse_v1(const uint8_t *p, size_t n, struct listener_proxy *out, const char **why)
{
  static const char pre[] = "PROXY ";
  size_t k = n < 6 ? n : 6;
  if (memcmp(p, pre, k))
    return bad(why, "not a PROXY header");
  const uint8_t *cr = memchr(p, '\r', n < LSN_PP_V1_MAX ? n : LSN_PP_V1_MAX);
  if (!cr || (size_t)(cr - p) + 1 >= n) {
    if (n >= LSN_PP_V1_MAX)
      return bad(why, "version 1 line longer than 107 bytes");
    return 0;
  }
  if (cr[1] != '\n')
    return bad(why, "version 1 line not ended by CRLF");
  size_t len = (size_t)(cr - p);
  for (size_t i = 0; i < len; i++)
    if (p[i] < 0x20 || p[i] > 0x7e)
      return bad(why, "version 1 line with a control or 8-bit byte");
  char line[LSN_PP_V1_MAX + 1];
  memcpy(line, p, len);
  line[len] = 0;
  char *w[7];
  size_t nw = words(line, w, 7);
  size_t used = len + 2;
  if (nw >= 2 && !strcmp(w[1], "UNKNOWN")) {
    out->local = true;
    return (int)used;
  }
  if (nw != 6 || (strcmp(w[1], "TCP4") && strcmp(w[1], "TCP6")))
    return bad(why, "version 1: not PROXY TCP4|TCP6 src dst sport dport");
  uint16_t sport, dport;
  if (!port_of(w[4], &sport) || !port_of(w[5], &dport))
    return bad(why, "version 1: bad port");
  memset(&out->src, 0, sizeof(out->src));
  out->local = false;
  if (w[1][3] == '4') {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src;
    struct in_addr d;
    if (inet_pton(AF_INET, w[2], &s4->sin_addr) != 1 || inet_pton(AF_INET, w[3], &d) != 1)
      return bad(why, "version 1: bad IPv4 address");
    s4->sin_family = AF_INET;
    s4->sin_port = htons(sport);
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src;
    struct in6_addr d;
    if (inet_pton(AF_INET6, w[2], &s6->sin6_addr) != 1 || inet_pton(AF_INET6, w[3], &d) != 1)
      return bad(why, "version 1: bad IPv6 address");
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(sport);
  }
  return (int)used;
}

static int parse_v2(const uint8_t *p, size_t n, struct listener_proxy *out, const char **why)
{
  size_t k = n < sizeof(v2sig) ? n : sizeof(v2sig);
  if (memcmp(p, v2sig, k))
    return bad(why, "not a PROXY header");
  if (n < 16)
    return 0;
  if ((p[12] >> 4) != 2)
    return bad(why, "version 2: unknown version");
  unsigned cmd = p[12] & 15u, fam = p[13] >> 4, proto = p[13] & 15u;
  size_t len = (size_t)p[14] << 8 | p[15];
  if (16 + len > LSN_PP_MAX)
    return bad(why, "version 2: header longer than 4096 bytes");
  if (cmd > 1)
    return bad(why, "version 2: unknown command");
  if (fam > 3 || proto > 2)
    return bad(why, "version 2: unknown address family or protocol");
  size_t need = fam == 1 ? 12 : fam == 2 ? 36 : fam == 3 ? 216 : 0;
  if (len < need)
    return bad(why, "version 2: address block shorter than its family");
  if (n < 16 + len)
    return 0;
  out->local = true;
  if (cmd == 0 || fam == 0 || fam == 3) /* LOCAL, UNSPEC, UNIX: the real address stays */
    return (int)(16 + len);
  memset(&out->src, 0, sizeof(out->src));
  out->local = false;
  const uint8_t *a = p + 16;
  if (fam == 1) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src;
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, a, 4);
    memcpy(&s4->sin_port, a + 8, 2);
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src;
    s6->sin6_family = AF_INET6;
    memcpy(&s6->sin6_addr, a, 16);
    memcpy(&s6->sin6_port, a + 32, 2);
  }
  return (int)(16 + len);
}

int listener_proxy_parse(const uint8_t *p, size_t n, struct listener_proxy *out, const char **why)
{
  *why = "";
  if (n == 0)
    return 0;
  if (p[0] == 'P')
    return parse_v1(p, n, out, why);
  if (p[0] == 0x0D)
    return parse_v2(p, n, out, why);
  return bad(why, "no PROXY header (the first byte is neither 'P' nor 0x0D)");
}

bool lsn_proxy_input(struct lsess *s, const uint8_t *p, size_t n)
{
  buf_append(&s->in, p, n);
  struct listener_proxy pr;
  const char *why;
  int r = listener_proxy_parse(buf_head(&s->in), buf_avail(&s->in), &pr, &why);
  if (r == 0 && buf_avail(&s->in) < LSN_PP_MAX)
    return true;
  if (r <= 0) {
    logs_panic(s->L->log, (uint64_t)time(NULL) * 1000u, "esmtp_listener",
               "Proxy_Protocol: malformed header from %s on %s: %s; connection closed", s->ip,
               s->ls->name, r == 0 ? "too long" : why);
    lsn_close(s);
    return false;
  }
  buf_consume(&s->in, (size_t)r);
  if (!pr.local)
    s->addr = pr.src; /* Peer, Relay_Hosts, limits and hooks see the client */
  s->pp_wait = false;
  s->pp_deadline = 0;
  if (!lsn_session_begin(s))
    return false;
  return lsn_run_held(s); /* bytes after the header (a pipelining client) */
}
