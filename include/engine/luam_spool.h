/* luam_spool: luam_msg_ops over a spooled message (spool.h + ctx.h), the
 * thin glue the engine passes to luam_call. The contexts are read back
 * from disk when they were dropped (Keep_Message_Dicts_In_Memory = false);
 * the caller persists changes (spool_save_ctx / spool_txn_ctx) after the
 * hook. msg:header() reads the header block from the queue file on first
 * use (a pread of at most LUAM_SPOOL_MAX_HEADER_BYTES; values unfolded, not
 * RFC 2047-decoded). Owner thread of the message only. */
#pragma once

#include "luam.h"
#include "spool.h"

struct conf;

#define LUAM_SPOOL_MAX_HEADER_BYTES (256u * 1024u)
#define LUAM_SPOOL_MAX_HEADERS 1024

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
  /* Header cache (owned; luam_spool_msg_done frees it). */
  char *hdr_block;
  size_t nhdr;
  struct luam_spool_hdr { const char *name, *value; size_t value_len; } *hdr;
  int hdr_loaded;
};

/* Free what the handle cached (headers). The handle may be reused after. */
void luam_spool_msg_done(struct luam_spool_msg *h);

extern const struct luam_msg_ops luam_spool_ops;
