/* Unit tests for secmem: blocks live in pages the kernel marks "dd"
 * (MADV_DONTDUMP) in /proc/self/smaps, are zeroed when handed out, wiped
 * when freed or moved by realloc, and the allocator is thread-safe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secmem.h"

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif
#ifdef T_ASAN
#include <sanitizer/asan_interface.h>
/* a freed block is poisoned: look at it on purpose */
#define PEEK_OK(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#define PEEK_DONE(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#else
#define PEEK_OK(p, n) ((void)0)
#define PEEK_DONE(p, n) ((void)0)
#endif

/* The VmFlags line of the /proc/self/smaps mapping that holds p, copied
 * into out; false when p is in no mapping. */
static bool vmflags_of(const void *p, char *out, size_t outlen)
{
  FILE *f = fopen("/proc/self/smaps", "r");
  assert_non_null(f);
  char line[512];
  bool in = false, found = false;
  uintptr_t a = (uintptr_t)p;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      in = a >= lo && a < hi;
      continue;
    }
    if (in && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(out, outlen, "%s", line + 8);
      found = true;
      break;
    }
  }
  fclose(f);
  return found;
}

static bool has_flag(const char *flags, const char *fl)
{
  char pad[520];
  snprintf(pad, sizeof pad, " %s ", flags);
  char *nl = strchr(pad, '\n');
  if (nl)
    *nl = ' ';
  char want[8];
  snprintf(want, sizeof want, " %s ", fl);
  return strstr(pad, want) != NULL;
}

/* VmLck of /proc/self/status, in kB. */
static long vmlck_kb(void)
{
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  char line[256];
  long kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmLck: %ld", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

static void test_dontdump_pages(void **state)
{
  (void)state;
  size_t sizes[] = {0, 1, 15, 16, 100, 1000, 4000, SECMEM_SMALL_MAX, SECMEM_SMALL_MAX + 1, 200000};
  void *p[sizeof sizes / sizeof sizes[0]];
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    p[i] = secmem_xalloc(sizes[i]);
    assert_true(((uintptr_t)p[i] & 15u) == 0);
    assert_true(secmem_owns(p[i]));
    if (sizes[i])
      assert_true(secmem_owns((char *)p[i] + sizes[i] - 1));
    char flags[512];
    assert_true(vmflags_of(p[i], flags, sizeof flags));
    assert_true(has_flag(flags, "dd")); /* MADV_DONTDUMP: not in a core dump */
    if (sizes[i]) { /* the last byte too (a large block spans pages) */
      assert_true(vmflags_of((char *)p[i] + sizes[i] - 1, flags, sizeof flags));
      assert_true(has_flag(flags, "dd"));
    }
  }
  struct secmem_stats st;
  secmem_stats(&st);
  assert_true(st.mapped >= 256 * 1024 + 200000);
  assert_true(st.blocks >= sizeof sizes / sizeof sizes[0]);
  print_message("mapped %zu bytes, %zu locked (mlock), %zu blocks\n", st.mapped, st.locked,
                st.blocks);
  /* RLIMIT_MEMLOCK allowed it: the pages say "lo". (The sanitizers'
   * mlock interceptors do nothing and report success: VmLck stays 0.) */
  if (st.locked && vmlck_kb() > 0) {
    char flags[512];
    assert_true(vmflags_of(p[0], flags, sizeof flags));
    assert_true(has_flag(flags, "lo"));
  }
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    secmem_free(p[i]);
  /* malloc'd memory is not ours, and is dumped */
  char *m = malloc(64);
  assert_false(secmem_owns(m));
  char flags[512];
  assert_true(vmflags_of(m, flags, sizeof flags));
  assert_false(has_flag(flags, "dd"));
  free(m);
}

static void test_zeroed_and_wiped_on_free(void **state)
{
  (void)state;
  char *s = secmem_xstrdup("hunter2-the-password");
  assert_string_equal(s, "hunter2-the-password");
  size_t n = strlen(s);
  secmem_free(s);
  /* the block stays mapped (small blocks go to a free list): its bytes are gone */
  PEEK_OK(s, n + 1);
  for (size_t i = 0; i < n + 1; i++)
    assert_int_equal(s[i], 0);
  PEEK_DONE(s, n + 1);
  /* the next block of that size reuses it, zeroed */
  char *t = secmem_xalloc(n + 1);
  for (size_t i = 0; i < n + 1; i++)
    assert_int_equal(t[i], 0);
  memset(t, 'x', n);
  secmem_free(t);
  secmem_free(NULL);
  /* strndup stops at n */
  char *u = secmem_xstrndup("abcdef", 3);
  assert_string_equal(u, "abc");
  secmem_free(u);
}

static void test_realloc_moves_and_wipes(void **state)
{
  (void)state;
  char *p = secmem_xrealloc(NULL, 10);
  memcpy(p, "secret-123", 10);
  char *q = secmem_xrealloc(p, 5000); /* another size class: moved */
  assert_ptr_not_equal(p, q);
  assert_memory_equal(q, "secret-123", 10);
  PEEK_OK(p, 10);
  for (size_t i = 0; i < 10; i++)
    assert_int_equal(p[i], 0);
  PEEK_DONE(p, 10);
  for (size_t i = 10; i < 5000; i++)
    assert_int_equal(q[i], 0);
  /* shrinking keeps the block and wipes the tail */
  char *r = secmem_xrealloc(q, 6);
  assert_ptr_equal(r, q);
  assert_memory_equal(r, "secret", 6);
  PEEK_OK(r + 6, 4); /* past the new size: poisoned under ASan */
  assert_int_equal(r[6], 0);
  assert_int_equal(r[9], 0);
  PEEK_DONE(r + 6, 4);
  secmem_free(r);
}

static void test_large_unmapped_on_free(void **state)
{
  (void)state;
  struct secmem_stats a, b;
  secmem_stats(&a);
  char *p = secmem_xalloc(100000);
  memset(p, 'k', 100000);
  secmem_stats(&b);
  assert_true(b.mapped >= a.mapped + 100000);
  secmem_free(p);
  secmem_stats(&b);
  assert_int_equal(b.mapped, a.mapped);
  assert_int_equal(b.blocks, a.blocks);
  assert_false(secmem_owns(p));
}

static void *churn(void *arg)
{
  unsigned seed = (unsigned)(uintptr_t)arg;
  void *live[64] = {0};
  for (int i = 0; i < 20000; i++) {
    unsigned k = (seed = seed * 1103515245u + 12345u) >> 16;
    void **slot = &live[k % 64];
    if (*slot) {
      secmem_free(*slot);
      *slot = NULL;
    } else {
      *slot = secmem_xalloc(k % 600);
      memset(*slot, 0x5a, k % 600);
    }
  }
  for (int i = 0; i < 64; i++)
    secmem_free(live[i]);
  return NULL;
}

static void test_threads(void **state)
{
  (void)state;
  struct secmem_stats a, b;
  secmem_stats(&a);
  pthread_t t[4];
  for (uintptr_t i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)(i + 1)), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  secmem_stats(&b);
  assert_int_equal(b.blocks, a.blocks);
  assert_int_equal(b.in_use, a.in_use);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_dontdump_pages),
    cmocka_unit_test(test_zeroed_and_wiped_on_free),
    cmocka_unit_test(test_realloc_moves_and_wipes),
    cmocka_unit_test(test_large_unmapped_on_free),
    cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
