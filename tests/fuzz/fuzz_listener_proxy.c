/* fuzz_listener_proxy: the ESMTP listener's PROXY header parser on
 * arbitrary bytes. Must never crash or read past the bytes given; a
 * header it accepts is no longer than the input, and every shorter prefix
 * of an accepted header asks for more or is refused, never accepted with
 * another length. */
#include "listener.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  /* a copy of exactly size bytes: ASan sees any read past the end */
  uint8_t *p = malloc(size ? size : 1);
  if (!p)
    return 0;
  memcpy(p, data, size);
  struct listener_proxy pr;
  const char *why;
  int r = listener_proxy_parse(p, size, &pr, &why);
  if (r > 0) {
    if ((size_t)r > size)
      abort();
    if (!pr.local && pr.src.ss_family != AF_INET && pr.src.ss_family != AF_INET6)
      abort();
    for (size_t k = 0; k < (size_t)r; k++)
      if (listener_proxy_parse(p, k, &pr, &why) > 0)
        abort();
  } else if (r < 0 && !why[0]) {
    abort(); /* a refusal says why */
  }
  free(p);
  return 0;
}
