/* hash: SipHash-2-4, a keyed 64-bit hash. Used where a hash decides who
 * owns something (queue -> worker) or stands in for a secret (a credential
 * identity in a pool key): keyed, so it is no offline oracle for the
 * input. Pure functions; any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct hash_key {
  uint64_t k0, k1;
};

/* SipHash-2-4 of n bytes of p under key k. Never fails. */
uint64_t hash_sip(const struct hash_key *k, const void *p, size_t n);

/* The process-wide key: random, drawn once (getrandom) on first use.
 * Never fails (falls back to time and address entropy). */
const struct hash_key *hash_process_key(void);
