/* engine.c owns the daemon's run loop: start-up, signals, graceful stop.
 * Main thread only. (Foundation stage: waits for a stop signal.) */
#include "engine.h"

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

int engine_main(const char *config_path)
{
  if (access(config_path, R_OK) != 0)
    util_fatal("%s: %s", config_path, strerror(errno));
  struct sigaction sa = {.sa_handler = on_stop};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  fprintf(stderr, "impetus %s: running with %s (Ctrl-C stops)\n", IMPETUS_VERSION, config_path);
  while (!stop_requested)
    pause();
  fprintf(stderr, "impetus: stopped\n");
  return 0;
}
