/* priv.c owns leaving root: looking up User/Group, handing the spool and
 * log files to them, and the set*id calls. It never logs (the caller does). priv_drop is called
 * by the main thread before the workers start, so no session, DNS query or
 * Lua script ever runs as root (glibc applies set*id to every thread, the
 * logger thread included). */
#include "priv.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uid_t chown_uid;
static gid_t chown_gid;
static int chown_err;

static int chown_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  (void)flag;
  (void)ftw;
  /* A sticky directory is a submission directory (pickup/ 1730
   * impetus:impetus-submit, docs/security.md): its group stays. */
  gid_t gid = st && S_ISDIR(st->st_mode) && (st->st_mode & S_ISVTX) ? (gid_t)-1 : chown_gid;
  if (lchown(path, chown_uid, gid) < 0 && errno != ENOENT && !chown_err)
    chown_err = -errno;
  return 0;
}

int priv_drop(const char *user, const char *group, int user_explicit, const char *const *paths,
              size_t npaths, char *err, size_t errlen)
{
  if (geteuid() != 0)
    return PRIV_NOT_ROOT;
  if (user == NULL || *user == 0)
    user = "impetus";
  errno = 0;
  struct passwd *pw = getpwnam(user);
  if (pw == NULL) {
    if (!user_explicit)
      return PRIV_NO_USER;
    snprintf(err, errlen, "User \"%s\": no such user", user);
    return -ENOENT;
  }
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  /* Group unset: the impetus group when it exists, else the user's own
   * primary group. A configured Group must exist. */
  struct group *gr = getgrnam(group && *group ? group : "impetus");
  if (gr != NULL)
    gid = gr->gr_gid;
  else if (group && *group) {
    snprintf(err, errlen, "Group \"%s\": no such group", group);
    return -ENOENT;
  }
  if (uid == 0)
    return PRIV_ROOT;
  chown_uid = uid;
  chown_gid = gid;
  chown_err = 0;
  for (size_t i = 0; i < npaths; i++) {
    if (paths[i] == NULL)
      continue;
    struct stat st;
    if (lstat(paths[i], &st) < 0)
      continue;
    if (S_ISDIR(st.st_mode))
      nftw(paths[i], chown_one, 16, FTW_PHYS | FTW_MOUNT);
    else
      chown_one(paths[i], &st, 0, NULL);
  }
  if (chown_err) {
    snprintf(err, errlen, "cannot give the spool and logs to %s: %s", user, strerror(-chown_err));
    return chown_err;
  }
  /* the user's groups from the group database (as initgroups does), so a
   * member of impetus-submit reads what impetus-inject queued */
  gid_t groups[64];
  int ngroups = (int)(sizeof groups / sizeof groups[0]);
  if (getgrouplist(user, gid, groups, &ngroups) < 0) {
    groups[0] = gid;
    ngroups = 1;
  }
  if (setgroups((size_t)ngroups, groups) < 0 || setresgid(gid, gid, gid) < 0 ||
      setresuid(uid, uid, uid) < 0) {
    int e = errno;
    snprintf(err, errlen, "cannot become %s: %s", user, strerror(e));
    return -e;
  }
  if (setuid(0) == 0 || seteuid(0) == 0) {
    snprintf(err, errlen, "could regain root after dropping to %s", user);
    return -EPERM;
  }
  return PRIV_DROPPED;
}
