/* base64: RFC 4648 encoding (standard alphabet, padded). */
#pragma once

#include <stddef.h>

/* Bytes needed to encode n bytes, plus a terminating NUL. */
static inline size_t base64_encoded_size(size_t n) { return (n + 2) / 3 * 4 + 1; }
/* Encode n bytes into out (base64_encoded_size(n) bytes); returns the
 * length written, without the NUL. */
size_t base64_encode(const void *in, size_t n, char *out);
/* Decode into out (at least n/4*3 bytes). Returns the decoded length, or
 * -EINVAL on a character outside the alphabet or bad padding. Whitespace
 * is not accepted. */
long base64_decode(const char *in, size_t n, void *out);
