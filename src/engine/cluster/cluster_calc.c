/* cluster_calc.c owns the pure arithmetic of cluster limits (see
 * cluster_calc.h). Never reads a clock, never does I/O, never allocates.
 * Any thread. */
#include "cluster_calc.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int copy_part(char *dst, size_t cap, const char *s, size_t n)
{
  if (n >= cap)
    return -EINVAL;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 0;
}

static int hexval(char c)
{
  return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* The user or password part, %XX decoded (a password may hold '@', ':'
 * or '/', which the URL must carry encoded). */
static int copy_userinfo(char *dst, size_t cap, const char *s, size_t n)
{
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '%') {
      int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return -EINVAL;
      ch = (char)(hi * 16 + lo);
      i += 2;
    }
    if (o + 1 >= cap)
      return -EINVAL;
    dst[o++] = ch;
  }
  dst[o] = '\0';
  return 0;
}

int clcalc_url_parse(const char *url, struct clcalc_url *out)
{
  memset(out, 0, sizeof *out);
  out->port = 6379;
  if (url == NULL)
    return -EINVAL;
  const char *p;
  if (!strncmp(url, "redis://", 8))
    p = url + 8;
  else if (!strncmp(url, "rediss://", 9)) {
    p = url + 9;
    out->tls = true;
  } else
    return -EINVAL;
  const char *end = p + strcspn(p, "/");
  const char *at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@')
      at = q;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon) {
      if (copy_userinfo(out->user, sizeof out->user, p, (size_t)(colon - p)) < 0 ||
          copy_userinfo(out->pass, sizeof out->pass, colon + 1, (size_t)(at - colon - 1)) < 0)
        return -EINVAL;
    } else if (copy_userinfo(out->pass, sizeof out->pass, p, (size_t)(at - p)) < 0)
      return -EINVAL;
    p = at + 1;
  }
  const char *hend, *port = NULL;
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (rb == NULL)
      return -EINVAL;
    if (copy_part(out->host, sizeof out->host, p + 1, (size_t)(rb - p - 1)) < 0)
      return -EINVAL;
    hend = rb + 1;
    if (hend < end && *hend != ':')
      return -EINVAL;
    if (hend < end)
      port = hend + 1;
  } else {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    hend = colon ? colon : end;
    if (copy_part(out->host, sizeof out->host, p, (size_t)(hend - p)) < 0)
      return -EINVAL;
    if (colon)
      port = colon + 1;
  }
  if (out->host[0] == '\0')
    return -EINVAL;
  if (port) {
    if (port >= end)
      return -EINVAL;
    long v = 0;
    for (const char *q = port; q < end; q++) {
      if (*q < '0' || *q > '9')
        return -EINVAL;
      v = v * 10 + (*q - '0');
      if (v > 65535)
        return -EINVAL;
    }
    if (v == 0)
      return -EINVAL;
    out->port = (uint16_t)v;
  }
  if (*end == '/' && end[1]) {
    long v = 0;
    for (const char *q = end + 1; *q; q++) {
      if (*q < '0' || *q > '9')
        return -EINVAL;
      v = v * 10 + (*q - '0');
      if (v > 1000000)
        return -EINVAL;
    }
    out->db = (int)v;
  }
  return 0;
}

void clcalc_gcra_params(uint32_t n, uint32_t per_s, struct clcalc_gcra *out)
{
  if (n == 0)
    n = 1;
  if (per_s == 0)
    per_s = 1;
  out->t_us = (double)per_s * 1e6 / (double)n;
  double period_us = (double)per_s * 1e6;
  double tau = period_us / 5;
  if (tau > 200000.0)
    tau = 200000.0;
  if (tau < out->t_us)
    tau = out->t_us;
  out->tau_us = tau;
  double mb = tau / out->t_us;
  out->max_batch = mb < 1 ? 1 : mb > 1e6 ? 1000000u : (uint32_t)mb;
}

double clcalc_rate(double prev, uint64_t used, uint64_t dt_ms)
{
  if (dt_ms == 0)
    return prev;
  double inst = (double)used * 1000.0 / (double)dt_ms;
  if (prev < 0)
    return inst;
  return 0.5 * prev + 0.5 * inst;
}

double clcalc_peak(double peak, double rate, uint64_t dt_ms)
{
  double d = peak * pow(0.5, (double)dt_ms / 1000.0);
  return rate > d ? rate : d;
}

uint32_t clcalc_ramp(uint32_t want, uint32_t last_grant, const struct clcalc_gcra *g)
{
  uint64_t twice = 2 * (uint64_t)last_grant;
  if (twice > g->max_batch)
    twice = g->max_batch;
  return twice > want ? (uint32_t)twice : want;
}

uint32_t clcalc_batch(double rate, const struct clcalc_gcra *g)
{
  double want = rate < 0 ? g->max_batch / 4.0 : rate * CLCALC_HORIZON_MS / 1000.0;
  if (want < 1)
    want = 1;
  if (want > g->max_batch)
    want = g->max_batch;
  uint32_t w = (uint32_t)(want + 0.5);
  if (w < 1)
    w = 1;
  return w > g->max_batch ? g->max_batch : w;
}

uint32_t clcalc_min_batch(uint32_t want)
{
  return want / 2 ? want / 2 : 1;
}

uint32_t clcalc_low_water(uint32_t want)
{
  return want / 4;
}

uint32_t clcalc_cap_desired(uint32_t limit, uint32_t in_use, uint32_t waiting, uint32_t share,
                            bool others_want)
{
  /* asked for more: as many again at once (a ramp-up of n connections
   * costs log2 n round trips, not n; spare leases are given back) */
  uint32_t step = waiting ? (in_use ? in_use : 1) : 0;
  uint64_t d = (uint64_t)in_use + (waiting > step ? waiting : step);
  if (limit && d > limit)
    d = limit;
  if (others_want && d > share)
    d = share;
  return d < in_use ? in_use : (uint32_t)d; /* never the lease of an open connection */
}

uint32_t clcalc_cap_shed(uint32_t in_use, uint32_t granted, uint32_t share, bool others_want)
{
  uint32_t keep = granted;
  if (others_want && share < keep)
    keep = share;
  return in_use > keep ? in_use - keep : 0;
}

uint32_t clcalc_local_share(uint32_t limit, uint32_t nodes)
{
  if (nodes == 0)
    nodes = 1;
  uint32_t s = limit / nodes;
  return s ? s : 1;
}

uint64_t clcalc_local_interval_ns(uint32_t n, uint32_t per_s, uint32_t nodes)
{
  if (n == 0)
    return 0;
  if (nodes == 0)
    nodes = 1;
  uint64_t iv = (uint64_t)per_s * 1000000000u * nodes / n;
  return iv ? iv : 1;
}

uint64_t clcalc_backoff_ms(uint32_t failures)
{
  uint64_t b = 100;
  for (uint32_t i = 1; i < failures && b < 2000; i++)
    b *= 2;
  return b > 2000 ? 2000 : b;
}
