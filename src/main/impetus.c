/* impetus.c: the daemon's entry point. Parses the command line, loads the
 * configuration, runs the engine until SIGTERM/SIGINT. Main thread only. */
#include "impetus_build.h"
#include "panic.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
  (void)sig;
  stop_requested = 1;
}

static void usage(FILE *out)
{
  fprintf(out,
          "usage: impetus [-c FILE]\n"
          "       impetus --check-config [-c FILE]\n"
          "       impetus --version\n");
}

int main(int argc, char **argv)
{
  const char *config = IMPETUS_SOURCE_ROOT "/etc/impetus.conf";
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
  if (access(config, R_OK) != 0)
    util_fatal("%s: %s", config, strerror(errno));

  struct sigaction sa = {.sa_handler = on_stop};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  fprintf(stderr, "impetus %s: running with %s (Ctrl-C stops)\n", IMPETUS_VERSION, config);
  while (!stop_requested)
    pause();
  fprintf(stderr, "impetus: stopped\n");
  return 0;
}
