/* secmem.c owns the secure-memory allocator: 256 KB chunks (anonymous
 * mappings, MADV_DONTDUMP + MADV_WIPEONFORK, mlock when allowed) carved
 * into power-of-two blocks with one free list per size class, and whole
 * mappings for large blocks. Every block is wiped when freed; chunks are
 * never unmapped (secrets are few; a chunk is reused by later blocks).
 * Must never: log, hand out memory outside its mappings, keep a secret's
 * bytes in a freed block. Threads: any; one mutex guards the lists. */
#include "secmem.h"

#include "panic.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SECMEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SECMEM_ASAN 1
#endif
#endif
#ifdef SECMEM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* Blocks hold pointers to malloc'd memory (a configuration's nodes):
 * LeakSanitizer must scan the mappings, as it scans the heap. */
#define ROOT_ADD(p, n) __lsan_register_root_region((p), (n))
#define ROOT_DEL(p, n) __lsan_unregister_root_region((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#define ROOT_ADD(p, n) ((void)(p), (void)(n))
#define ROOT_DEL(p, n) ((void)(p), (void)(n))
#endif

#define CHUNK_SIZE (256u * 1024u)
#define MIN_SHIFT 5u  /* smallest block: 32 bytes, header included */
#define NCLASSES 11u  /* 32 .. 32768: a configuration arena's chunks fit (see conf_value.c) */
#define CLASS_LARGE 0xffu
#define MAGIC 0x5ec3e7a1u

struct hdr { /* 16 bytes before every block's payload */
  uint32_t magic;
  uint16_t cls;
  uint16_t locked; /* large: its mapping is mlock'ed */
  union {
    struct hdr *next; /* free (small): the free list */
    size_t size;      /* in use: the size asked for */
  } u;
};
_Static_assert(sizeof(struct hdr) == 16, "header keeps payloads 16-byte aligned");
_Static_assert(SECMEM_SMALL_MAX == (1u << (MIN_SHIFT + NCLASSES - 1)) - sizeof(struct hdr),
               "SECMEM_SMALL_MAX is the largest class's payload");

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct hdr *free_list[NCLASSES];
static char *cur;          /* the chunk being carved */
static size_t cur_used;
static char **chunks;      /* every chunk, for secmem_owns */
static size_t nchunks, capchunks;
static struct hdr **larges; /* live large blocks, for secmem_owns */
static size_t nlarges, caplarges;
static struct secmem_stats stats;

/* Map n bytes (a page multiple) for secrets; *locked says whether mlock
 * took. NULL on failure. */
static void *map_secure(size_t n, bool *locked)
{
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  if (madvise(p, n, MADV_DONTDUMP) < 0) { /* the point of this module: no fallback */
    munmap(p, n);
    return NULL;
  }
#ifdef MADV_WIPEONFORK
  (void)madvise(p, n, MADV_WIPEONFORK); /* kernels before 4.14: EINVAL, fine */
#endif
  stats.mapped += n;
  ROOT_ADD(p, n);
  *locked = mlock(p, n) == 0; /* EPERM/ENOMEM over RLIMIT_MEMLOCK: unlocked but still not dumped */
  if (*locked)
    stats.locked += n;
  return p;
}

/* Undo map_secure (the caller wiped what it wrote). */
static void unmap_secure(void *p, size_t n, bool locked)
{
  stats.mapped -= n;
  if (locked)
    stats.locked -= n;
  ROOT_DEL(p, n);
  munmap(p, n);
}

static unsigned class_of(size_t total)
{
  unsigned c = 0;
  while (((size_t)1 << (MIN_SHIFT + c)) < total)
    c++;
  return c;
}

/* Append p to a pointer array; false when out of memory. */
static bool push(void ***arr, size_t *n, size_t *cap, void *p)
{
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    void **a = realloc(*arr, c * sizeof *a);
    if (a == NULL)
      return false;
    *arr = a;
    *cap = c;
  }
  (*arr)[(*n)++] = p;
  return true;
}

static struct hdr *alloc_small(unsigned cls)
{
  size_t bsize = (size_t)1 << (MIN_SHIFT + cls);
  struct hdr *h = free_list[cls];
  if (h) {
    UNPOISON(h, sizeof *h);
    free_list[cls] = h->u.next;
    return h;
  }
  if (cur == NULL || CHUNK_SIZE - cur_used < bsize) {
    bool locked;
    char *c = map_secure(CHUNK_SIZE, &locked);
    if (c == NULL)
      return NULL;
    if (!push((void ***)&chunks, &nchunks, &capchunks, c)) {
      unmap_secure(c, CHUNK_SIZE, locked);
      return NULL;
    }
    POISON(c, CHUNK_SIZE);
    /* the rest of the old chunk stays unused */
    cur = c;
    cur_used = 0;
  }
  h = (struct hdr *)(void *)(cur + cur_used);
  cur_used += bsize;
  UNPOISON(h, sizeof *h);
  return h;
}

void *secmem_alloc(size_t n)
{
  if (n > SIZE_MAX / 2)
    return NULL;
  size_t total = n + sizeof(struct hdr);
  pthread_mutex_lock(&mu);
  struct hdr *h;
  size_t bsize;
  if (n <= SECMEM_SMALL_MAX) {
    unsigned cls = class_of(total);
    h = alloc_small(cls);
    bsize = (size_t)1 << (MIN_SHIFT + cls);
    if (h)
      h->cls = (uint16_t)cls;
  } else {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    bsize = (total + page - 1) / page * page;
    bool locked;
    h = map_secure(bsize, &locked);
    if (h && !push((void ***)&larges, &nlarges, &caplarges, h)) {
      unmap_secure(h, bsize, locked);
      h = NULL;
    }
    if (h) {
      h->cls = CLASS_LARGE;
      h->locked = locked;
    }
  }
  if (h) {
    h->magic = MAGIC;
    h->u.size = n;
    stats.in_use += bsize;
    stats.blocks++;
  }
  pthread_mutex_unlock(&mu);
  if (h == NULL)
    return NULL;
  /* No memset: fresh mappings are zero, and every freed block was wiped
   * (secmem_free), so a block is zero when handed out. */
  UNPOISON(h + 1, n);
  return h + 1;
}

void *secmem_xalloc(size_t n)
{
  void *p = secmem_alloc(n);
  if (p == NULL)
    util_panic("secmem: out of memory (%zu bytes)", n);
  return p;
}

static struct hdr *hdr_of(const void *p)
{
  struct hdr *h = (struct hdr *)(uintptr_t)p - 1;
  if (h->magic != MAGIC || (h->cls >= NCLASSES && h->cls != CLASS_LARGE))
    util_panic("secmem: %p was not allocated here (or freed twice)", p);
  return h;
}

/* The whole block (header included): the class size, or the mapping. */
static size_t block_of(const struct hdr *h)
{
  if (h->cls != CLASS_LARGE)
    return (size_t)1 << (MIN_SHIFT + h->cls);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (h->u.size + sizeof *h + page - 1) / page * page;
}

void secmem_free(void *p)
{
  if (p == NULL)
    return;
  struct hdr *h = hdr_of(p);
  size_t len = block_of(h) - sizeof *h;
  util_wipe(p, h->u.size); /* the rest is zero already: see secmem_alloc, secmem_xrealloc */
  pthread_mutex_lock(&mu);
  stats.in_use -= len + sizeof *h;
  stats.blocks--;
  if (h->cls == CLASS_LARGE) {
    size_t map_len = len + sizeof *h;
    bool locked = h->locked;
    for (size_t i = 0; i < nlarges; i++)
      if (larges[i] == h) {
        larges[i] = larges[--nlarges];
        break;
      }
    util_wipe(h, sizeof *h);
    unmap_secure(h, map_len, locked);
  } else {
    h->magic = 0; /* a second free panics */
    h->u.next = free_list[h->cls];
    free_list[h->cls] = h;
    POISON(h, len + sizeof *h);
  }
  pthread_mutex_unlock(&mu);
}

void *secmem_xrealloc(void *p, size_t n)
{
  if (p == NULL)
    return secmem_xalloc(n);
  struct hdr *h = hdr_of(p);
  size_t old = h->u.size;
  if (n <= old) {
    util_wipe((char *)p + n, old - n);
    if (h->cls != CLASS_LARGE) { /* a large block's size also gives its mapping's */
      POISON((char *)p + n, old - n);
      h->u.size = n;
    }
    return p;
  }
  void *q = secmem_xalloc(n);
  memcpy(q, p, old);
  secmem_free(p);
  return q;
}

char *secmem_xstrndup(const char *s, size_t n)
{
  size_t len = strnlen(s, n);
  char *p = secmem_xalloc(len + 1);
  memcpy(p, s, len);
  p[len] = 0;
  return p;
}

char *secmem_xstrdup(const char *s)
{
  return secmem_xstrndup(s, strlen(s));
}

bool secmem_owns(const void *p)
{
  const char *c = p;
  bool found = false;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < nchunks && !found; i++)
    found = c >= chunks[i] && c < chunks[i] + CHUNK_SIZE;
  for (size_t i = 0; i < nlarges && !found; i++)
    found = c >= (const char *)(larges[i] + 1) && c < (const char *)(larges[i] + 1) + larges[i]->u.size;
  pthread_mutex_unlock(&mu);
  return found;
}

void secmem_stats(struct secmem_stats *st)
{
  pthread_mutex_lock(&mu);
  *st = stats;
  pthread_mutex_unlock(&mu);
}
