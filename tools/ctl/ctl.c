/* impetus-ctl: the console client. Finds the control socket (-s PATH, or
 * Control_Listener / <Spoolbase>/impetus.sock from the configuration),
 * sends one command line and prints the answer. The server renders both
 * the human-readable text and the JSON (--json), so this program stays a
 * pipe: it never parses the answer. Exit status: 0 OK, 1 the engine
 * refused the command, 2 usage, 3 cannot reach the engine. */
#include "conf.h"
#include "ctlcmd.h"
#include "impetus_build.h"
#include "paths.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define REQUEST_MAX 4096 /* the server's CTL_REQUEST_MAX */

static void usage(FILE *out)
{
  fprintf(out,
          "usage: impetus-ctl [-c FILE | -s SOCKET] [--json] COMMAND ...\n"
          "\n"
          "Talks to a running impetus over its control socket (Control_Listener, default\n"
          "<Spoolbase>/impetus.sock). Commands (Momentum console names):\n"
          "%s"
          "\n"
          "Options:\n"
          "  -c FILE     configuration to find the socket in (default: the bundled one)\n"
          "  -s SOCKET   the control socket path\n"
          "  --json      machine-readable answer (anywhere on the line)\n"
          "Exit status: 0 done, 1 refused by the engine, 2 usage, 3 engine not reachable.\n",
          ctlcmd_usage);
}

static int socket_from_config(const char *path, char *out, size_t n)
{
  struct conf_error err;
  struct conf *c = conf_load(path, &err);
  if (c == NULL) {
    char text[sizeof err.file + sizeof err.msg + 32];
    fprintf(stderr, "impetus-ctl: %s\n", conf_error_str(&err, text, sizeof text));
    return -1;
  }
  const struct conf_stanza *cl = conf_stanza_first(c, "control_listener");
  const struct conf_stanza *ls = cl ? conf_stanza_child(cl, "listen") : NULL;
  if (ls)
    snprintf(out, n, "%s", conf_stanza_instance(ls));
  else
    snprintf(out, n, "%s/impetus.sock", conf_str(conf_global(c), CONF_SPOOLBASE));
  conf_unref(c);
  return 0;
}

int main(int argc, char **argv)
{
  const char *config = NULL, *sock = NULL;
  bool json = false;
  /* --json is taken anywhere on the line; the other words keep their order */
  char *words[64];
  int nw = 0;
  int i;
  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) {
      json = true;
      continue;
    }
    if (nw > 0) { /* the command has started: everything else is its words */
      if (nw == (int)(sizeof words / sizeof words[0])) {
        fprintf(stderr, "impetus-ctl: too many words\n");
        return 2;
      }
      words[nw++] = argv[i];
    } else if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "-s")) {
      if (i + 1 == argc) {
        fprintf(stderr, "impetus-ctl: '%s' needs a value\n", argv[i]);
        return 2;
      }
      *(argv[i][1] == 'c' ? &config : &sock) = argv[i + 1];
      i++;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--version")) {
      printf("impetus-ctl %s\n", IMPETUS_VERSION);
      return 0;
    } else if (argv[i][0] == '-' && strcmp(argv[i], "-") != 0) {
      fprintf(stderr, "impetus-ctl: unknown option '%s' (see impetus-ctl --help)\n", argv[i]);
      return 2;
    } else {
      words[nw++] = argv[i];
    }
  }
  /* a wrong command is refused here, engine or not */
  char why[512];
  if (nw == 0) {
    usage(stderr);
    return 2;
  }
  if (ctlcmd_check(nw, words, why, sizeof why) < 0) {
    fprintf(stderr, "impetus-ctl: %s (see impetus-ctl --help)\n", why);
    return 2;
  }
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  if (sock)
    snprintf(path, sizeof path, "%s", sock);
  else if (socket_from_config(config ? config : paths_config(), path, sizeof path) < 0)
    return 3;

  char req[REQUEST_MAX];
  size_t n = (size_t)snprintf(req, sizeof req, "%s", json ? "json" : "text");
  for (i = 0; i < nw; i++) {
    if (strpbrk(words[i], "\t\n")) {
      fprintf(stderr, "impetus-ctl: arguments cannot contain tabs or newlines\n");
      return 2;
    }
    int w = snprintf(req + n, sizeof req - n, "\t%s", words[i]);
    if (w < 0 || (size_t)w >= sizeof req - n - 1) {
      fprintf(stderr, "impetus-ctl: command too long\n");
      return 2;
    }
    n += (size_t)w;
  }
  req[n++] = '\n';

  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "impetus-ctl: cannot reach impetus at %s: %s\n", path, strerror(errno));
    return 3;
  }
  for (size_t off = 0; off < n;) {
    ssize_t w = write(fd, req + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      fprintf(stderr, "impetus-ctl: %s: %s\n", path, strerror(errno));
      return 3;
    }
    off += (size_t)w;
  }
  /* "OK\n" or "ERR\n", then the body until the server closes */
  char buf[65536];
  char status[8];
  size_t sl = 0;
  int rc = -1;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    size_t off = 0;
    while (rc < 0 && off < (size_t)r) {
      char c = buf[off++];
      if (c == '\n') {
        status[sl] = '\0';
        rc = !strcmp(status, "OK") ? 0 : 1;
      } else if (sl + 1 < sizeof status) {
        status[sl++] = c;
      }
    }
    if (off < (size_t)r)
      fwrite(buf + off, 1, (size_t)r - off, rc == 0 ? stdout : stderr);
  }
  close(fd);
  if (rc < 0) {
    fprintf(stderr, "impetus-ctl: %s: no answer\n", path);
    return 3;
  }
  return rc;
}
