/* fuzz_pickup: the pickup-file parser and the address check on arbitrary
 * bytes; and the context-dictionary decoder (a decoded dictionary must
 * round-trip; secrets are dropped, so the copy may be smaller). Must never crash, leak or
 * read out of bounds; an accepted file's body offsets must be in range, and
 * spool_scrub_secrets must leave it valid, same offsets, no password. */
#include "ctx.h"
#include "spool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The value of x-context key in env (the last line wins), or NULL. */
static const char *env_get(const struct msg_envelope *env, const char *key)
{
  const char *v = NULL;
  for (uint32_t i = 0; i < env->nctx; i++)
    if (!strcmp(env->ctx[i].key, key))
      v = env->ctx[i].value;
  return v;
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct msg_envelope env;
  char why[256];
  if (msg_parse((const char *)data, size, &env, why, sizeof(why)) == 0) {
    if (env.body_off + env.body_size != size || env.nrcpt == 0 || !env.sender)
      abort();
    for (uint32_t i = 0; i < env.nrcpt; i++)
      if (msg_addr_check(env.rcpt[i], strlen(env.rcpt[i])) != NULL)
        abort();
    /* scrubbing x-context secrets keeps the file valid, its offsets and
     * its other envelope lines, and leaves no secret behind */
    uint64_t body_off = env.body_off;
    uint32_t nrcpt = env.nrcpt;
    msg_envelope_done(&env);
    char *copy = malloc(size);
    memcpy(copy, data, size);
    size_t lo, hi;
    size_t n = msg_scrub_secrets(copy, body_off, ctx_key_is_secret, &lo, &hi);
    if (n && (hi <= lo || hi > body_off || memcmp(copy + body_off, data + body_off, size - body_off)))
      abort();
    if (msg_parse(copy, size, &env, why, sizeof(why)) != 0 || env.body_off != body_off ||
        env.nrcpt != nrcpt)
      abort();
    const char *pw = env_get(&env, "outbound_smtp_auth_pass");
    if (pw && *pw)
      abort();
    free(copy);
  }
  msg_envelope_done(&env);
  (void)msg_addr_check((const char *)data, size);
  struct ctx *c = ctx_new();
  if (ctx_deserialize(c, data, size) == 0) {
    struct buf b = {0};
    ctx_serialize(c, &b);
    struct ctx *d = ctx_new();
    if (ctx_deserialize(d, b.data, b.len) != 0 || ctx_count(d) > ctx_count(c))
      abort();
    ctx_free(d);
    buf_done(&b, 0);
  }
  ctx_free(c);
  return 0;
}
