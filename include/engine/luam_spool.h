/* luam_spool: luam_msg_ops over a spooled message (spool.h + ctx.h), the
 * thin glue the engine passes to luam_call. The contexts are read back
 * from disk when they were dropped (Keep_Message_Dicts_In_Memory = false);
 * the caller persists changes (spool_save_ctx / spool_txn_ctx) after the
 * hook. Headers are not available (msg:header raises "not supported").
 * Owner thread of the message only. */
#pragma once

#include "luam.h"
#include "spool.h"

struct conf;

/* The handle passed as luam_call.msg. Zero it, then fill sp, msg, conf. */
struct luam_spool_msg {
  struct spool *sp;       /* for spool_load_ctx */
  struct spool_msg *msg;
  struct conf *conf;      /* validates binding / binding group names; may be NULL */
  /* Set by msg:code() / msg:discard(): 0 = none. */
  int code;
  char text[256];
  int load_error;         /* -errno of a failed spool_load_ctx, 0 if none */
  char id[SPOOL_ID_LEN + 1];
};

extern const struct luam_msg_ops luam_spool_ops;
