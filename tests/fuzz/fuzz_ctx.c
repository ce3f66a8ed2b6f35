/* fuzz_ctx: the context-dictionary (de)serialisation the spool's ATTR
 * records carry, on arbitrary bytes (the pickup target sees the same
 * decoder only through pickup-shaped inputs). A dictionary that decodes
 * must serialise to a form that decodes to the same entries (and the
 * same number of bytes again); no secret key is ever written;
 * every decoded key reads back. Never crash, leak or read out of bounds. */
#include "buf.h"
#include "ctx.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct ctx *c = ctx_new();
  if (c == NULL)
    abort();
  int r = ctx_deserialize(c, data, size);
  if (r != 0 && r != -EBADMSG && r != -E2BIG)
    abort();
  /* whatever prefix was decoded must be consistent */
  struct ctx_iter it = {0};
  const char *k, *v;
  size_t kl, vl;
  unsigned fl;
  while (ctx_nextn(c, &it, &k, &kl, &v, &vl, &fl)) {
    size_t gl;
    const char *g = ctx_getn(c, k, kl, &gl);
    if (g == NULL || gl != vl || memcmp(g, v, vl) != 0)
      abort();
    if (ctx_key_is_secret(k, kl) && !(fl & CTX_F_SECRET))
      abort();
  }
  struct buf b1 = {0}, b2 = {0};
  ctx_serialize(c, &b1);
  struct ctx *d = ctx_new();
  if (ctx_deserialize(d, buf_head(&b1), buf_avail(&b1)) != 0)
    abort();
  ctx_serialize(d, &b2);
  /* the same entries (the order follows the hash table, not the input) */
  if (buf_avail(&b1) != buf_avail(&b2) || ctx_count(d) > ctx_count(c))
    abort();
  memset(&it, 0, sizeof it);
  while (ctx_nextn(d, &it, &k, &kl, &v, &vl, &fl)) {
    size_t gl;
    const char *g = ctx_getn(c, k, kl, &gl);
    if (g == NULL || gl != vl || memcmp(g, v, vl) != 0)
      abort();
  }
  if (ctx_exists(d, "outbound_smtp_auth_pass"))
    abort(); /* a secret never reaches the serialised form */
  /* mutate and re-read: delete every other key, quiesce */
  memset(&it, 0, sizeof it);
  unsigned i = 0;
  while (ctx_next(c, &it, &k, &v))
    if (i++ % 2 == 0)
      (void)ctx_delete(c, k);
  ctx_quiesce(c);
  buf_done(&b1, 1);
  buf_done(&b2, 1);
  ctx_free(c);
  ctx_free(d);
  return 0;
}
