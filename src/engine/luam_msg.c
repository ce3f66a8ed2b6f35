/* luam_msg.c owns the msg object a hook receives (Momentum's msys msg
 * methods: context, envelope, headers, binding, code). It never hands a
 * script an engine pointer (values are copied onto the Lua stack) and
 * never lets a msg outlive its call (a finished call raises). It never
 * blocks and never logs. Runs on the thread that owns the luam. */
#include "luam_int.h"
#include "authkeys.h"

#include <errno.h>
#include <lauxlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ */
/* msg methods */

struct lcall *luam_msg_check(lua_State *L)
{
  /* Fast path while a hook runs: compare the metatable with the state's
   * (an integer registry index, no string lookup). */
  struct lmsg *m = NULL;
  struct lstate *ls = luam_tls_ls;
  if (ls && ls->L && lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->msg_mt_ref);
    if (lua_rawequal(L, -1, -2))
      m = lua_touserdata(L, 1);
    lua_pop(L, 2);
  }
  if (!m)
    m = luaL_checkudata(L, 1, MSG_MT);
  if (!m->call)
    luaL_error(L, "msg used after its hook returned");
  return m->call;
}

static int check_ctx(lua_State *L, int idx)
{
  lua_Integer w = luaL_checkinteger(L, idx);
  if (w != LUAM_CTX_CONN && w != LUAM_CTX_MESS)
    luaL_error(L, "bad context type %d (VCTX_CONN or VCTX_MESS)", (int)w);
  return (int)w;
}

/* Context lookup; inside outbound_smtp_auth_config, a message-context
 * key of outbound_smtp_auth (not the password) that the message does not
 * set shows what the unit will use: authkeys' rule over the configured
 * value for the scope (false there = off = nil). */
static const char *ctx_lookup(struct lcall *c, int which, const char *key, size_t *len)
{
  if (!c->ops->ctx_get)
    return NULL;
  const char *v = c->ops->ctx_get(c->msg, which, key, len);
  int k = -1;
  if (v || which != LUAM_CTX_MESS || c->hook != LUAM_HOOK_OUTBOUND_SMTP_AUTH_CONFIG ||
      (k = authkeys_find(key)) < 0 || k == AUTHKEY_PASS)
    return v;
  const struct luam_host *h = &c->ls->lm->host;
  if (!h->eval)
    return NULL;
  const char *mess[AUTHKEY__COUNT], *conf[AUTHKEY__COUNT] = {0};
  for (int i = 0; i < AUTHKEY__COUNT; i++) {
    size_t l;
    mess[i] = c->ops->ctx_get(c->msg, which, authkeys_ctx_key((enum authkey)i), &l);
  }
  const char *bg = c->ops->binding_group ? c->ops->binding_group(c->msg) : NULL;
  const char *b = c->ops->binding ? c->ops->binding(c->msg) : NULL;
  conf[k] = h->eval(h->arg, bg, b, c->domain, authkeys_option((enum authkey)k));
  if (conf[k] && !strcasecmp(conf[k], "false"))
    conf[k] = NULL;
  v = authkeys_pick((enum authkey)k, mess, conf);
  if (v)
    *len = strlen(v);
  return v;
}

/* msg:context_*(type, key, ...): the context type into *which, the key. */
static const char *ctx_key(lua_State *L, int *which)
{
  *which = check_ctx(L, 2);
  return luaL_checkstring(L, 3);
}

/* msg:context_*(type, key, ...): key's value in that context, or NULL. */
static const char *ctx_arg_lookup(lua_State *L, size_t *len)
{
  struct lcall *c = luam_msg_check(L);
  int w;
  const char *k = ctx_key(L, &w);
  *len = 0;
  return ctx_lookup(c, w, k, len);
}

static int m_context_get(lua_State *L)
{
  size_t len;
  const char *v = ctx_arg_lookup(L, &len);
  if (v)
    lua_pushlstring(L, v, len);
  else
    lua_pushliteral(L, "");
  return 1;
}

static int m_context_exists(lua_State *L)
{
  size_t len;
  lua_pushinteger(L, ctx_arg_lookup(L, &len) ? 1 : 0);
  return 1;
}

static int m_context_exists_and_get(lua_State *L)
{
  size_t len;
  const char *v = ctx_arg_lookup(L, &len);
  if (!v) {
    lua_pushinteger(L, 0);
    lua_pushnil(L);
  } else {
    lua_pushinteger(L, 1);
    lua_pushlstring(L, v, len);
  }
  return 2;
}

static int m_context_set(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, ctx_set);
  int w;
  const char *k = ctx_key(L, &w);
  size_t len;
  const char *v = luaL_checklstring(L, 4, &len);
  int rc = c->ops->ctx_set(c->msg, w, k, v, len);
  if (rc < 0)
    return luaL_error(L, "context_set(%s): %s", k, strerror(-rc));
  lua_pushinteger(L, 1);
  return 1;
}

static int m_context_delete(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, ctx_delete);
  int w;
  const char *k = ctx_key(L, &w);
  lua_pushinteger(L, c->ops->ctx_delete(c->msg, w, k) > 0 ? 1 : 0);
  return 1;
}

void luam_push_or_nil(lua_State *L, const char *s)
{
  if (s)
    lua_pushstring(L, s);
  else
    lua_pushnil(L);
}

static int m_mailfrom(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, mailfrom);
  if (!lua_isnoneornil(L, 2))
    return luaL_error(L, "msg:mailfrom(new) is not supported (read-only envelope)");
  luam_push_or_nil(L, c->ops->mailfrom(c->msg));
  return 1;
}

static int m_rcptto(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, rcptto);
  if (!lua_isnoneornil(L, 2))
    return luaL_error(L, "msg:rcptto(new) is not supported (read-only envelope)");
  luam_push_or_nil(L, c->ops->rcptto(c->msg, c->rcpt >= 0 ? (size_t)c->rcpt : 0));
  return 1;
}

/* msg:rcptto_list() -> { "a@x", "b@y", ... } (Impetus extension) */
static int m_rcptto_list(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, rcptto);
  lua_newtable(L);
  const char *r;
  for (size_t i = 0; (r = c->ops->rcptto(c->msg, i)) != NULL; i++) {
    lua_pushstring(L, r);
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int m_header(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, header);
  const char *name = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3))
    return luaL_error(L, "msg:header(name, value) is not supported (headers are read-only)");
  lua_newtable(L);
  size_t len;
  const char *v;
  for (size_t i = 0; (v = c->ops->header(c->msg, name, i, &len)) != NULL; i++) {
    lua_pushlstring(L, v, len);
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int binding_common(lua_State *L, int group)
{
  struct lcall *c = luam_msg_check(L);
  const char *(*get)(void *) = group ? c->ops->binding_group : c->ops->binding;
  int (*set)(void *, const char *) = group ? c->ops->set_binding_group : c->ops->set_binding;
  if (lua_isnoneornil(L, 2)) {
    if (!get)
      return luaL_error(L, "msg:%s() is not supported here", group ? "binding_group" : "binding");
    luam_push_or_nil(L, get(c->msg));
    return 1;
  }
  const char *name = luaL_checkstring(L, 2);
  if (!set)
    return luaL_error(L, "msg:%s(name) is not supported here", group ? "binding_group" : "binding");
  if (set(c->msg, name) < 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, name);
  return 1;
}

static int m_binding(lua_State *L) { return binding_common(L, 0); }
static int m_binding_group(lua_State *L) { return binding_common(L, 1); }

static int m_get_message_size(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, size);
  lua_pushnumber(L, (lua_Number)c->ops->size(c->msg));
  return 1;
}

static int m_code(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, set_code);
  int code = (int)luaL_optinteger(L, 2, 550);
  const char *text = luaL_optstring(L, 3, "5.7.1 rejected by policy");
  if (code < 200 || code > 599)
    return luaL_error(L, "msg:code: %d is not an SMTP reply code", code);
  c->ops->set_code(c->msg, code, text);
  return 0;
}

/* vctx:disconnect(code, text): the listener ends the session with it. */
static int m_disconnect(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  int code = (int)luaL_optinteger(L, 2, 421);
  const char *text = luaL_optstring(L, 3, "4.7.0 Closing connection");
  if (code < 200 || code > 599)
    return luaL_error(L, "vctx:disconnect: %d is not an SMTP reply code", code);
  if (c->ops->disconnect) {
    c->ops->disconnect(c->msg, code, text);
    return 0;
  }
  NEED(c, set_code);
  c->ops->set_code(c->msg, code, text);
  return 0;
}

/* ac:esmtp_capability_add / _remove (boot.lua passes the session's msg):
 * msg:esmtp_capability(cap, add). */
static int m_esmtp_capability(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  const char *cap = luaL_checkstring(L, 2);
  bool add = lua_toboolean(L, 3);
  const char *fn = add ? "ac:esmtp_capability_add" : "ac:esmtp_capability_remove";
  if (!c->ops->esmtp_capability)
    return luaL_error(L, "%s: the session is not attached to an SMTP listener", fn);
  int r = c->ops->esmtp_capability(c->msg, cap, add);
  if (r == -ENOSPC)
    return luaL_error(L, "%s: too many capability changes in this session", fn);
  if (r < 0)
    return luaL_error(L, "%s: '%s' is not an EHLO keyword (printable ASCII, a letter or digit "
                      "first, at most 200 bytes)", fn, cap);
  return 0;
}

/* ac:inbound_session_count(cidr, service_type) (boot.lua). */
static int m_inbound_session_count(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  const char *cidr = luaL_optstring(L, 2, NULL);
  if (!c->ops->inbound_session_count)
    return luaL_error(L, "ac:inbound_session_count: the session is not attached to an SMTP "
                      "listener");
  long n = c->ops->inbound_session_count(c->msg, cidr);
  if (n < 0)
    return luaL_error(L, "ac:inbound_session_count: '%s' is not an address or CIDR", cidr);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int m_discard(lua_State *L)
{
  struct lcall *c = luam_msg_check(L);
  NEED(c, set_code);
  c->ops->set_code(c->msg, 550, luaL_optstring(L, 2, "5.7.0 discarded by policy"));
  return 0;
}

static int m_tostring(lua_State *L)
{
  struct lmsg *m = luaL_checkudata(L, 1, MSG_MT);
  if (!m->call)
    return luaL_error(L, "msg used after its hook returned");
  const char *id = m->call->ops->id ? m->call->ops->id(m->call->msg) : NULL;
  lua_pushstring(L, id ? id : "?");
  return 1;
}

static const luaL_Reg msg_methods[] = {
  {"context_get", m_context_get},
  {"context_set", m_context_set},
  {"context_exists", m_context_exists},
  {"context_exists_and_get", m_context_exists_and_get},
  {"context_delete", m_context_delete},
  {"mailfrom", m_mailfrom},
  {"rcptto", m_rcptto},
  {"rcptto_list", m_rcptto_list},
  {"header", m_header},
  {"binding", m_binding},
  {"binding_group", m_binding_group},
  {"get_message_size", m_get_message_size},
  {"code", m_code},
  {"set_code", m_code},
  {"discard", m_discard},
  {"disconnect", m_disconnect},
  {"esmtp_capability", m_esmtp_capability},
  {"inbound_session_count", m_inbound_session_count},
  {NULL, NULL},
};

/* msg.id / msg.conn_id / msg.batch_id, then the methods. */
static int m_index(lua_State *L)
{
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1)); /* the methods table */
  if (!lua_isnil(L, -1))
    return 1;
  const char *k = lua_tostring(L, 2);
  if (k && (strcmp(k, "id") == 0 || strcmp(k, "batch_id") == 0 || strcmp(k, "conn_id") == 0))
    return m_tostring(L);
  return 1;
}

int luam_msg_metatable(lua_State *L)
{
  luaL_newmetatable(L, MSG_MT);
  lua_newtable(L);
  luaL_register(L, NULL, msg_methods);
  lua_pushcclosure(L, m_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "msg");
  lua_setfield(L, -2, "__metatable");
  return luaL_ref(L, LUA_REGISTRYINDEX);
}
