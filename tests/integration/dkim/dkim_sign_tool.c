/* dkim_sign_tool: the test driver that signs one message file with the
 * dkim library and prints the DKIM-Signature header field (not installed).
 *
 *   dkim_sign_tool -k KEY -a ALG -c HCANON/BCANON -d DOMAIN -s SELECTOR
 *                  -H from:to:... [-o oversign:...] [-x skip:...] [-t T]
 *                  [-i IDENTITY] [-l] [-w WIDTH] MESSAGE
 *
 * Exit 0 with the header on stdout, 1 with the reason on stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "dkim.h"

static size_t split(char *s, const char **out, size_t max)
{
  size_t n = 0;
  for (char *t = strtok(s, ":,"); t && n < max; t = strtok(NULL, ":,"))
    out[n++] = t;
  return n;
}

int main(int argc, char **argv)
{
  const char *keyf = NULL, *alg = "rsa-sha256", *canon = "relaxed/relaxed";
  const char *hdrs[64], *over[64], *skip[64];
  struct dkim_params p = {.timestamp = -1};
  int c;
  while ((c = getopt(argc, argv, "k:a:c:d:s:H:o:x:t:i:lw:")) != -1) {
    switch (c) {
    case 'k': keyf = optarg; break;
    case 'a': alg = optarg; break;
    case 'c': canon = optarg; break;
    case 'd': p.domain = optarg; break;
    case 's': p.selector = optarg; break;
    case 'H': p.headers = hdrs; p.nheaders = split(optarg, hdrs, 64); break;
    case 'o': p.oversign = over; p.noversign = split(optarg, over, 64); break;
    case 'x': p.skip = skip; p.nskip = split(optarg, skip, 64); break;
    case 't': p.timestamp = atoll(optarg); break;
    case 'i': p.identity = optarg; break;
    case 'l': p.body_length = true; break;
    case 'w': p.width = (unsigned)atoi(optarg); break;
    default: fprintf(stderr, "usage: see the source\n"); return 1;
    }
  }
  if (!keyf || optind + 1 != argc) {
    fprintf(stderr, "usage: dkim_sign_tool -k KEY ... MESSAGE\n");
    return 1;
  }
  char hc[32] = "", *bc;
  snprintf(hc, sizeof(hc), "%s", canon);
  bc = strchr(hc, '/');
  if (bc)
    *bc++ = 0;
  if (dkim_alg_parse(alg, &p.alg) < 0 || dkim_canon_parse(hc, &p.hcanon) < 0 ||
      dkim_canon_parse(bc ? bc : "simple", &p.bcanon) < 0) {
    fprintf(stderr, "bad -a or -c\n");
    return 1;
  }
  char why[256];
  struct dkim_key *k = dkim_key_load_file(keyf, true, why, sizeof(why));
  if (!k) {
    fprintf(stderr, "%s: %s\n", keyf, why);
    return 1;
  }
  FILE *f = fopen(argv[optind], "rb");
  if (!f) {
    fprintf(stderr, "%s: %s\n", argv[optind], strerror(errno));
    return 1;
  }
  struct buf msg = {0}, out = {0};
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    buf_append(&msg, chunk, n);
  fclose(f);
  int r = dkim_sign(&p, k, msg.data ? (const char *)msg.data : "", msg.len, &out, why, sizeof(why));
  dkim_key_unref(k);
  if (r < 0) {
    fprintf(stderr, "sign: %s\n", why);
    return 1;
  }
  fwrite(out.data, 1, out.len, stdout);
  buf_done(&msg, 0);
  buf_done(&out, 0);
  return 0;
}
