/* priv.h: dropping root after start-up (User / Group options). After the
 * drop the kernel marks the process non-dumpable (fs.suid_dumpable = 0,
 * the default), so no core dump can hold a password. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* What priv_drop did. */
enum priv_result {
  PRIV_NOT_ROOT = 0, /* not started as root: nothing to do */
  PRIV_DROPPED,      /* now running as the user and group */
  PRIV_NO_USER,      /* root, the default user does not exist: still root */
  PRIV_ROOT,         /* root, and User/Group name root: still root */
};

/* Started as root: look up user (NULL: impetus) and group (NULL: the
 * impetus group if it exists, else the user's primary group), give `paths` (directories recursively, files; NULL
 * entries skipped) to user:group, set supplementary groups, then setgid
 * and setuid for good (checked: regaining root must fail). `user_explicit`:
 * the user was configured, so a missing user is an error rather than
 * PRIV_NO_USER. Returns a priv_result, or -errno with a reason in err. */
int priv_drop(const char *user, const char *group, int user_explicit, const char *const *paths,
              size_t npaths, char *err, size_t errlen);
