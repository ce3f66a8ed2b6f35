/* engine: the running daemon. Owns start-up after the command line has been
 * parsed: loads the configuration, starts the ingest and worker threads,
 * handles SIGTERM/SIGINT (graceful stop), SIGHUP (reload), SIGUSR1 (reopen
 * logs). Main thread only. */
#pragma once

/* Run the engine with the configuration at config_path until a stop signal.
 * Returns the process exit status (0 after a graceful stop). An unusable
 * environment at start-up (bad configuration, unreadable spool) exits with
 * a clear message. */
int engine_main(const char *config_path);
