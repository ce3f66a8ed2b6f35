/* test_listener_proxy.c: the PROXY header parser of the ESMTP listener
 * (listener_proxy_parse): version 1 and 2 headers whole and cut at every
 * byte (each proper prefix asks for more), what follows the header left
 * alone, LOCAL / UNKNOWN, and malformed headers refused early. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Every proper prefix of p[0..hlen) asks for more; the whole gives hlen. */
static void whole_and_prefixes(const uint8_t *p, size_t n, size_t hlen, struct listener_proxy *out)
{
  const char *why;
  for (size_t k = 0; k < hlen; k++)
    assert_int_equal(listener_proxy_parse(p, k, out, &why), 0);
  assert_int_equal(listener_proxy_parse(p, n, out, &why), (int)hlen);
}

static void v1_tcp4(void **st)
{
  (void)st;
  const char *h = "PROXY TCP4 10.1.2.3 192.0.2.1 5555 25\r\n";
  char buf[128];
  snprintf(buf, sizeof buf, "%sEHLO x\r\n", h);
  struct listener_proxy pr;
  whole_and_prefixes((const uint8_t *)buf, strlen(buf), strlen(h), &pr);
  assert_false(pr.local);
  const struct sockaddr_in *s4 = (const struct sockaddr_in *)&pr.src;
  assert_int_equal(s4->sin_family, AF_INET);
  assert_int_equal(ntohs(s4->sin_port), 5555);
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
  assert_string_equal(ip, "10.1.2.3");
}

static void v1_tcp6_unknown(void **st)
{
  (void)st;
  struct listener_proxy pr;
  const char *why;
  const char *h6 = "PROXY TCP6 2001:db8::7 ::1 1 65535\r\n";
  assert_int_equal(listener_proxy_parse((const uint8_t *)h6, strlen(h6), &pr, &why), (int)strlen(h6));
  assert_false(pr.local);
  assert_int_equal(pr.src.ss_family, AF_INET6);
  const char *hu = "PROXY UNKNOWN ffff::1 ::1 1 2\r\n";
  assert_int_equal(listener_proxy_parse((const uint8_t *)hu, strlen(hu), &pr, &why), (int)strlen(hu));
  assert_true(pr.local);
}

static void v1_malformed(void **st)
{
  (void)st;
  struct listener_proxy pr;
  const char *why;
  static const char *bad[] = {
    "EHLO x\r\n",                                  /* no header */
    "PROXY TCP4 999.1.2.3 10.0.0.1 1 2\r\n",       /* address */
    "PROXY TCP4 10.1.2.3 10.0.0.1 1\r\n",          /* fields */
    "PROXY TCP4 10.1.2.3 10.0.0.1 1 65536\r\n",    /* port */
    "PROXY TCP4 10.1.2.3 10.0.0.1 01 2\r\n",       /* leading zero */
    "PROXY TCP5 10.1.2.3 10.0.0.1 1 2\r\n",        /* protocol */
    "PROXY TCP4 10.1.2.3 10.0.0.1 1 2\rX",         /* CR without LF */
    "PROXY TCP6 10.1.2.3 10.0.0.1 1 2\r\n",        /* family */
    "PROXI",                                       /* refused before the line ends */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(listener_proxy_parse((const uint8_t *)bad[i], strlen(bad[i]), &pr, &why),
                     -EBADMSG);
  char longer[200];
  memset(longer, 'x', sizeof longer);
  memcpy(longer, "PROXY TCP4 ", 11);
  assert_int_equal(listener_proxy_parse((const uint8_t *)longer, sizeof longer, &pr, &why), -EBADMSG);
  assert_int_equal(listener_proxy_parse((const uint8_t *)longer, 106, &pr, &why), 0);
}

static size_t v2(uint8_t *out, uint8_t cmd, uint8_t fam, const uint8_t *addr, size_t alen,
                 size_t tlv)
{
  memcpy(out, SIG, 12);
  out[12] = (uint8_t)(0x20 | cmd);
  out[13] = fam;
  size_t len = alen + tlv;
  out[14] = (uint8_t)(len >> 8);
  out[15] = (uint8_t)len;
  if (alen > 0)
    memcpy(out + 16, addr, alen);
  memset(out + 16 + alen, 0xAB, tlv);
  return 16 + len;
}

static void v2_ipv4_ipv6_local(void **st)
{
  (void)st;
  uint8_t buf[256];
  struct listener_proxy pr;
  uint8_t a4[12] = {10, 1, 2, 3, 192, 0, 2, 1, 0x0F, 0xA0, 0, 25};
  size_t n = v2(buf, 1, 0x11, a4, sizeof a4, 7);
  memcpy(buf + n, "EHLO", 4);
  whole_and_prefixes(buf, n + 4, n, &pr);
  assert_false(pr.local);
  const struct sockaddr_in *s4 = (const struct sockaddr_in *)&pr.src;
  assert_int_equal(ntohs(s4->sin_port), 4000);
  assert_int_equal(ntohl(s4->sin_addr.s_addr), 0x0A010203u);

  uint8_t a6[36] = {0x20, 0x01, 0x0d, 0xb8};
  a6[15] = 7;
  a6[32] = 0x12;
  a6[33] = 0x34;
  n = v2(buf, 1, 0x21, a6, sizeof a6, 0);
  whole_and_prefixes(buf, n, n, &pr);
  assert_false(pr.local);
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&pr.src;
  assert_int_equal(s6->sin6_family, AF_INET6);
  assert_int_equal(ntohs(s6->sin6_port), 0x1234);
  assert_int_equal(s6->sin6_addr.s6_addr[15], 7);

  n = v2(buf, 0, 0x00, NULL, 0, 0); /* LOCAL: a health check */
  whole_and_prefixes(buf, n, n, &pr);
  assert_true(pr.local);
  uint8_t un[216] = {0};
  n = v2(buf, 1, 0x31, un, 0, 0); /* UNIX with no room for its addresses */
  const char *why;
  assert_int_equal(listener_proxy_parse(buf, n, &pr, &why), -EBADMSG);
}

static void v2_malformed(void **st)
{
  (void)st;
  uint8_t buf[64];
  struct listener_proxy pr;
  const char *why;
  uint8_t a4[12] = {0};
  size_t n = v2(buf, 1, 0x11, a4, sizeof a4, 0);
  buf[12] = 0x11; /* version 1 in a binary header */
  assert_int_equal(listener_proxy_parse(buf, n, &pr, &why), -EBADMSG);
  n = v2(buf, 2, 0x11, a4, sizeof a4, 0); /* command 2 */
  assert_int_equal(listener_proxy_parse(buf, n, &pr, &why), -EBADMSG);
  n = v2(buf, 1, 0x11, a4, 8, 0); /* IPv4 with 8 address bytes */
  assert_int_equal(listener_proxy_parse(buf, n, &pr, &why), -EBADMSG);
  n = v2(buf, 1, 0x11, a4, sizeof a4, 0);
  buf[14] = 0xFF; /* 65,292 bytes announced: over the limit */
  assert_int_equal(listener_proxy_parse(buf, n, &pr, &why), -EBADMSG);
  memcpy(buf, SIG, 12);
  buf[5] = 0; /* a broken signature */
  assert_int_equal(listener_proxy_parse(buf, 12, &pr, &why), -EBADMSG);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(v1_tcp4),           cmocka_unit_test(v1_tcp6_unknown),
    cmocka_unit_test(v1_malformed),      cmocka_unit_test(v2_ipv4_ipv6_local),
    cmocka_unit_test(v2_malformed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
