/* crc32c: CRC-32C (Castagnoli), the checksum of spool records. Uses the
 * SSE4.2 instruction when the CPU has it, else a table. Any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC-32C over n bytes; start with crc = 0. */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);
