#include "listener_int.h"
void lsn_lua_start(struct listener *L) { (void)L; }
void lsn_lua_stop(struct listener *L) { (void)L; }
void lsn_lua_refresh(struct listener *L) { (void)L; }
void lsn_lua_posts(struct listener *L) { (void)L; }
void lsn_lua_sess_done(struct lsess *s) { (void)s; }
int lsn_lua_command(struct lsess *s, const struct smtps_event *ev) { (void)s; (void)ev; return 0; }
int lsn_lua_auth(struct lsess *s, const struct smtps_event *ev, char *t, size_t n) { (void)s; (void)ev; (void)t; (void)n; return -1; }
void lsn_lua_message_ctx(struct lsess *s, struct buf *f) { (void)s; (void)f; }
bool lsn_lua_active(const struct listener *L) { (void)L; return false; }
