/* cluster_calc (prefix clcalc_): the arithmetic of cluster-wide limits,
 * as pure functions (no clock, no I/O, no allocation), so every rule is
 * unit-testable: the Redis URL, GCRA parameters of a throttle, how many
 * tokens to ask Redis for at once, what a node wants of a connection cap,
 * how many connections it must give back, local shares when Redis is
 * away, reconnect back-off. Any thread. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* ---- the store ---- */

struct clcalc_url {
  char host[256];
  uint16_t port; /* default 6379 */
  int db;        /* default 0 */
  char user[128];/* "" = none (AUTH pass only) */
  char pass[256];/* "" = no AUTH */
  bool tls;      /* rediss:// */
};

/* Parse redis://[[user]:pass@]host[:port][/db] or rediss://...; IPv6 hosts
 * in brackets. Returns 0, or -EINVAL (out unspecified). */
int clcalc_url_parse(const char *url, struct clcalc_url *out);

/* ---- rate limits (GCRA in Redis) ---- */

#define CLCALC_HORIZON_MS 500u /* a batch covers this much of the recent rate */

struct clcalc_gcra {
  double t_us;        /* emission interval: per_s * 1e6 / n */
  double tau_us;      /* how far ahead of now tokens may be granted */
  uint32_t max_batch; /* tokens one grant may hold: tau / t (>= 1) */
};

/* Parameters for "n per per_s seconds" (n >= 1, per_s >= 1). The
 * tolerance is a fifth of the period (at most 200 ms), never less than
 * one interval: over a window W the fleet sends at most W*n/per_s plus
 * max_batch. */
void clcalc_gcra_params(uint32_t n, uint32_t per_s, struct clcalc_gcra *out);

/* The recent rate (tokens per second, exponentially weighted) after
 * `used` tokens in dt_ms (dt_ms > 0). prev < 0: no history yet. */
double clcalc_rate(double prev, uint64_t used, uint64_t dt_ms);

/* Tokens to ask for at once: the recent rate over CLCALC_HORIZON_MS,
 * at least 1, at most g->max_batch. rate < 0 (unknown): a quarter of
 * max_batch. */
uint32_t clcalc_batch(double rate, const struct clcalc_gcra *g);
/* The peak of the recent rate, halving every second: a batch sized to it
 * survives a pause in the mail. */
double clcalc_peak(double peak, double rate, uint64_t dt_ms);
/* While workers wait for tokens: at least twice the last grant (at most
 * g->max_batch), so a ramp from a small batch takes log2 round trips. */
uint32_t clcalc_ramp(uint32_t want, uint32_t last_grant, const struct clcalc_gcra *g);
/* The smallest grant worth a round trip when tokens are scarce: half of
 * want, at least 1. */
uint32_t clcalc_min_batch(uint32_t want);
/* Refill when the local balance falls to this (a quarter of the batch):
 * the answer arrives before the balance runs out. */
uint32_t clcalc_low_water(uint32_t want);

/* ---- connection caps (leases in Redis) ---- */

/* Leases the node should hold: those in use plus those asked for since
 * the last round trip (at least as many again as are in use, so a
 * ramp-up takes few round trips), never over the limit, nor over the fair share
 * while other nodes want more; never fewer than those in use (a lease is
 * given back only once its connection has closed, so the cap holds). */
uint32_t clcalc_cap_desired(uint32_t limit, uint32_t in_use, uint32_t waiting, uint32_t share,
                            bool others_want);
/* Connections to close: beyond what Redis granted (after an outage or a
 * lost lease) or, while other nodes wait, beyond the fair share. */
uint32_t clcalc_cap_shed(uint32_t in_use, uint32_t granted, uint32_t share, bool others_want);

/* ---- without Redis (failure_mode open) ---- */

/* A node's share of a connection limit among `nodes` nodes: the floor, so
 * the fleet stays within the limit, at least 1. nodes 0 counts as 1. */
uint32_t clcalc_local_share(uint32_t limit, uint32_t nodes);
/* A node's local GCRA interval (ns) for "n per per_s" shared by `nodes`. */
uint64_t clcalc_local_interval_ns(uint32_t n, uint32_t per_s, uint32_t nodes);

/* Wait before reconnect attempt number `failures` (>= 1): 100 ms doubling
 * to 2 s (Redis is near: a node should be back soon after it). */
uint64_t clcalc_backoff_ms(uint32_t failures);
