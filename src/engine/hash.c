/* hash.c owns SipHash-2-4 and the process-wide hash key. Pure; any thread
 * (the process key is published once with an atomic). */
#include "hash.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND                                                                \
  do {                                                                          \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                   \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                      \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                      \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                   \
  } while (0)

static uint64_t load_le64(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

uint64_t hash_sip(const struct hash_key *k, const void *data, size_t n)
{
  const uint8_t *p = data;
  uint64_t v0 = 0x736f6d6570736575ULL ^ k->k0;
  uint64_t v1 = 0x646f72616e646f6dULL ^ k->k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k->k0;
  uint64_t v3 = 0x7465646279746573ULL ^ k->k1;
  size_t whole = n - n % 8;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t m = load_le64(p + i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)n << 56;
  for (size_t i = 0; i < n % 8; i++)
    b |= (uint64_t)p[whole + i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static struct hash_key process_key;
static atomic_int process_key_state; /* 0 none, 1 being drawn, 2 ready */

const struct hash_key *hash_process_key(void)
{
  if (atomic_load_explicit(&process_key_state, memory_order_acquire) == 2)
    return &process_key;
  int expect = 0;
  if (atomic_compare_exchange_strong(&process_key_state, &expect, 1)) {
    struct hash_key k;
    if (getrandom(&k, sizeof k, 0) != (ssize_t)sizeof k) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      k.k0 = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&k;
      k.k1 = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4fULL;
    }
    process_key = k;
    atomic_store_explicit(&process_key_state, 2, memory_order_release);
  } else {
    while (atomic_load_explicit(&process_key_state, memory_order_acquire) != 2)
      ;
  }
  return &process_key;
}
