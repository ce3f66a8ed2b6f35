/* dns: MX and A/AAAA resolution for routing, with c-ares driven from a
 * ring (its sockets polled with IORING_OP_POLL_ADD, its timeouts on the
 * ring's timers) and a per-worker cache honouring TTLs.
 * One `struct dns` per worker ring; loop-thread only. Callbacks are never
 * called inside dns_resolve(); dns_free() must not be called from inside
 * a callback. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct ring;
struct dns;
struct dns_req;

enum dns_status {
  DNS_OK = 0,
  DNS_TEMPFAIL,  /* SERVFAIL, REFUSED, timeout, network: retry later */
  DNS_NXDOMAIN,  /* the domain does not exist: permanent */
  DNS_NOADDR,    /* the name exists but has no MX and no A/AAAA: permanent */
  DNS_NULLMX,    /* RFC 7505 "MX 0 .": the domain accepts no mail: permanent */
  DNS_BADNAME,   /* not a valid domain name: permanent */
};

/* True for results that must not be retried. */
static inline bool dns_status_permanent(enum dns_status s) {
  return s == DNS_NXDOMAIN || s == DNS_NOADDR || s == DNS_NULLMX || s == DNS_BADNAME;
}
const char *dns_status_name(enum dns_status s);

struct dns_params {
  const char *servers;   /* "127.0.0.1:5353,[::1]:53"; NULL = /etc/resolv.conf */
  unsigned timeout_ms;   /* first try; c-ares doubles it per round; 0 = 2000 */
  unsigned tries;        /* 0 = 2 */
  unsigned cache_max;    /* cached names; 0 = 10000 */
  unsigned neg_ttl;      /* seconds to cache NXDOMAIN/NODATA without an SOA; 0 = 60 */
  unsigned max_ttl;      /* cap on any cached TTL, seconds; 0 = 86400 */
};

/* One address of a host. */
struct dns_addr {
  int family; /* AF_INET or AF_INET6 */
  uint8_t a[16];
};

struct dns_host {
  char *name;             /* owned by the result */
  uint16_t pref;          /* MX preference (0 for A fallback / plain host) */
  enum dns_status status; /* of its address lookups */
  unsigned naddr;
  struct dns_addr *addr;  /* IPv4 first, then IPv6 */
};

/* Result of dns_resolve: hosts in delivery order (MX preference, equal
 * preferences in random order), each with its addresses. Valid during
 * the callback only. */
struct dns_result {
  enum dns_status status;
  bool implicit_mx;  /* no MX records: the domain's own A/AAAA (RFC 5321 5.1) */
  char text[160];    /* human-readable reason when status != DNS_OK */
  unsigned nhosts;
  struct dns_host *hosts;
};

typedef void (*dns_cb)(void *arg, const struct dns_result *res);

/* Create a resolver on ring r. NULL on failure with a reason in err. */
struct dns *dns_new(struct ring *r, const struct dns_params *p, char *err, size_t errlen);
/* Destroy; outstanding requests are dropped without their callbacks. */
void dns_free(struct dns *d);
/* Resolve `name`: with mx, the MX set (A/AAAA fallback when there is no
 * MX, null MX reported as DNS_NULLMX); without, just the host's A/AAAA
 * (Gateway, Routes). IP literals resolve to themselves. The callback runs
 * later from the loop. Returns a handle for dns_cancel, never NULL. */
struct dns_req *dns_resolve(struct dns *d, const char *name, bool mx, dns_cb cb, void *arg);
/* Drop a request: its callback will not be called. */
void dns_cancel(struct dns_req *q);
/* Cache statistics (tests). */
void dns_stats(const struct dns *d, unsigned *cached, unsigned long *hits, unsigned long *queries);
/* Fill a sockaddr for address a and port; returns its length. */
socklen_t dns_sockaddr(const struct dns_addr *a, uint16_t port, struct sockaddr_storage *out);
/* Parse a DNS response the way dns_resolve does and count the records of
 * qtype (1 A, 15 MX, 28 AAAA): the count, or -1 for a malformed message.
 * For the fuzz target and tests. */
int dns_parse_check(const uint8_t *msg, size_t len, uint16_t qtype);
