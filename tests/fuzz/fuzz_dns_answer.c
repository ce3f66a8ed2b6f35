/* Fuzz the DNS response walker used by dns_resolve (remote input: any
 * server on the path can answer). The first byte picks the query type. */
#include <stddef.h>
#include <stdint.h>

#include "dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  static const uint16_t types[] = {1, 15, 28};
  (void)dns_parse_check(data + 1, size - 1, types[data[0] % 3]);
  return 0;
}
