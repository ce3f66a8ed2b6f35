/* impetus.c: the daemon's entry point. Parses the command line and hands
 * over to the engine (or answers --check-config / --eval-config).
 * Main thread only. */
#include "engine.h"
#include "impetus_build.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
  fprintf(out,
          "usage: impetus [-c FILE]\n"
          "       impetus --version\n");
}

/* The bundled default configuration: the installed copy if there is one,
 * else the one in the source tree this binary was built from. */
static const char *default_config(void)
{
  static const char installed[] = IMPETUS_SYSCONFDIR "/impetus.conf";
  if (access(installed, R_OK) == 0)
    return installed;
  return IMPETUS_SOURCE_ROOT "/etc/impetus.conf";
}

int main(int argc, char **argv)
{
  const char *config = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-c") && i + 1 < argc) {
      config = argv[++i];
    } else if (!strcmp(argv[i], "--version")) {
      printf("impetus %s\n", IMPETUS_VERSION);
      return 0;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  return engine_main(config ? config : default_config());
}
