/* luam_ds.c owns the datasource thread pool and its SQLite connections.
 * It never calls into Lua and never logs: errors travel back in the job.
 * Pool threads only run SQL; luam_ds_new/free are main-thread only;
 * luam_ds_submit/orphan may be called from any worker thread. */
#include "luam_ds.h"
#include "luam_job.h"

#include "fifo.h"
#include "panic.h"

#include <errno.h>
#include <sys/stat.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_DEFAULT_THREADS 2
#define DS_MAX_THREADS 16
#define DS_DEFAULT_BUSY_MS 10000

struct luam_ds {
  struct luam_ds_conf *confs; /* owned copies */
  char **paths;               /* sqlite file per datasource */
  char **names, **uris;       /* owned strings behind confs */
  size_t n;
  pthread_t threads[DS_MAX_THREADS];
  unsigned nthreads;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct luam_job *head, *tail; /* guarded by mu */
  int stopping;                 /* guarded by mu */
  unsigned long queries;        /* guarded by mu */
};

void luam_job_free(struct luam_job *job)
{
  if (!job)
    return;
  free(job->sql);
  for (size_t i = 0; i < job->nparams; i++) {
    free(job->params[i].name);
    free(job->params[i].s);
  }
  free(job->params);
  free(job->err);
  for (size_t i = 0; i < job->ncols; i++)
    free(job->cols[i]);
  free(job->cols);
  for (size_t i = 0; i < job->nrows * job->ncols; i++)
    free(job->cells[i].s);
  free(job->cells);
  free(job);
}

static void job_fail(struct luam_job *job, const char *a, const char *b)
{
  char tmp[512];
  snprintf(tmp, sizeof tmp, "datasource %s: %s", a, b);
  job->failed = 1;
  free(job->err);
  job->err = util_xstrdup(tmp);
}

static int bind_params(sqlite3_stmt *st, struct luam_job *job)
{
  for (size_t i = 0; i < job->nparams; i++) {
    const struct luam_jval *v = &job->params[i];
    int idx = (int)i + 1;
    if (v->name) {
      idx = sqlite3_bind_parameter_index(st, v->name);
      for (const char *pre = "$@"; idx == 0 && *pre; pre++) {
        v->name[0] = *pre; /* the same name with sqlite's other prefixes */
        idx = sqlite3_bind_parameter_index(st, v->name);
      }
      if (idx == 0)
        continue; /* a named parameter the statement does not use */
    }
    int rc;
    switch (v->type) {
    case LUAM_JV_NIL: rc = sqlite3_bind_null(st, idx); break;
    case LUAM_JV_INT: rc = sqlite3_bind_int64(st, idx, v->i); break;
    case LUAM_JV_BOOL: rc = sqlite3_bind_int64(st, idx, v->i); break;
    case LUAM_JV_NUM: rc = sqlite3_bind_double(st, idx, v->d); break;
    case LUAM_JV_STR: rc = sqlite3_bind_text(st, idx, v->s, (int)v->len, SQLITE_STATIC); break;
    default: util_panic("luam_ds: bad parameter type %d", v->type);
    }
    if (rc != SQLITE_OK)
      return rc;
  }
  return SQLITE_OK;
}

static void run_job(struct luam_ds *ds, sqlite3 **conns, struct luam_job *job)
{
  const char *name = ds->confs[job->ds].name;
  if (!conns[job->ds]) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(ds->paths[job->ds], &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
      job_fail(job, name, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
      sqlite3_close(db);
      return;
    }
    unsigned ms = ds->confs[job->ds].busy_timeout_ms;
    sqlite3_busy_timeout(db, (int)(ms ? ms : DS_DEFAULT_BUSY_MS));
    conns[job->ds] = db;
  }
  sqlite3 *db = conns[job->ds];
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, job->sql, -1, &st, NULL) != SQLITE_OK) {
    job_fail(job, name, sqlite3_errmsg(db));
    return;
  }
  if (bind_params(st, job) != SQLITE_OK) {
    job_fail(job, name, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return;
  }
  size_t ncols = (size_t)sqlite3_column_count(st);
  size_t cap = 0, bytes = 0;
  size_t max_rows = ds->confs[job->ds].max_rows;
  if (max_rows == 0 || max_rows > LUAM_DS_MAX_ROWS)
    max_rows = LUAM_DS_MAX_ROWS;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (job->execute)
      continue;
    if (job->nrows == 0 && !job->cols) {
      job->ncols = ncols;
      job->cols = util_xcalloc(ncols ? ncols : 1, sizeof *job->cols);
      for (size_t c = 0; c < ncols; c++) {
        const char *cn = sqlite3_column_name(st, (int)c);
        job->cols[c] = util_xstrdup(cn ? cn : "");
      }
    }
    if (job->nrows == max_rows)
      continue; /* Momentum's max_rows: the rest is dropped */
    if (bytes > LUAM_DS_MAX_RESULT_BYTES) {
      job_fail(job, name, "result over the limit (bytes)");
      sqlite3_finalize(st);
      return;
    }
    if (job->nrows == cap) {
      cap = cap ? cap * 2 : 4;
      job->cells = util_xrealloc(job->cells, cap * (ncols ? ncols : 1) * sizeof *job->cells);
    }
    for (size_t c = 0; c < ncols; c++) {
      struct luam_jval *v = &job->cells[job->nrows * ncols + c];
      memset(v, 0, sizeof *v);
      switch (sqlite3_column_type(st, (int)c)) {
      case SQLITE_INTEGER: v->type = LUAM_JV_INT; v->i = sqlite3_column_int64(st, (int)c); break;
      case SQLITE_FLOAT: v->type = LUAM_JV_NUM; v->d = sqlite3_column_double(st, (int)c); break;
      case SQLITE_NULL: v->type = LUAM_JV_NIL; break;
      default: {
        const void *p = sqlite3_column_blob(st, (int)c);
        size_t len = (size_t)sqlite3_column_bytes(st, (int)c);
        v->type = LUAM_JV_STR;
        v->s = util_xmalloc(len + 1);
        if (len)
          memcpy(v->s, p, len);
        v->s[len] = 0;
        v->len = len;
        bytes += len;
      }
      }
    }
    job->nrows++;
  }
  if (rc != SQLITE_DONE)
    job_fail(job, name, sqlite3_errmsg(db));
  sqlite3_finalize(st);
}

/* Hand an answered job home, or free it when its owner is gone.
 * Called with ds->mu held. */
static void deliver_locked(struct luam_job *job)
{
  if (!job->owner) {
    luam_job_free(job);
    return;
  }
  job->post(job->post_arg, job->complete, job);
}

static void *pool_main(void *arg)
{
  struct luam_ds *ds = arg;
  sqlite3 **conns = util_xcalloc(ds->n ? ds->n : 1, sizeof *conns);
  pthread_mutex_lock(&ds->mu);
  for (;;) {
    while (!ds->head && !ds->stopping)
      pthread_cond_wait(&ds->cv, &ds->mu);
    if (!ds->head)
      break; /* stopping and nothing queued */
    struct luam_job *job;
    FIFO_POP(ds->head, ds->tail, job);
    job->next = NULL;
    if (ds->stopping) {
      job_fail(job, ds->confs[job->ds].name, "shutting down");
      deliver_locked(job);
      continue;
    }
    if (!job->owner) {
      luam_job_free(job);
      continue;
    }
    ds->queries++;
    pthread_mutex_unlock(&ds->mu);
    run_job(ds, conns, job);
    pthread_mutex_lock(&ds->mu);
    deliver_locked(job);
  }
  pthread_mutex_unlock(&ds->mu);
  for (size_t i = 0; i < ds->n; i++)
    sqlite3_close(conns[i]);
  free(conns);
  return NULL;
}

/* The file a "sqlite:PATH" or "sqlite://PATH" uri names. */
static const char *sqlite_path(const char *uri)
{
  const char *p = uri + 7;
  return strncmp(p, "//", 2) == 0 ? p + 2 : p; /* sqlite:///abs/path */
}

static int validate(const struct luam_ds_conf *confs, size_t n, char *err, size_t errlen)
{
  for (size_t i = 0; i < n; i++) {
    if (!confs[i].name || !confs[i].uri) {
      snprintf(err, errlen, "datasource %zu: missing name or uri", i);
      return -EINVAL;
    }
    if (strncmp(confs[i].uri, "sqlite:", 7) != 0 || !confs[i].uri[7]) {
      snprintf(err, errlen, "datasource %s: unsupported uri \"%s\" (only sqlite:/path)",
               confs[i].name, confs[i].uri);
      return -EINVAL;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(confs[i].name, confs[j].name) == 0) {
        snprintf(err, errlen, "datasource %s: defined twice", confs[i].name);
        return -EINVAL;
      }
  }
  return 0;
}

int luam_ds_check(const struct luam_ds_conf *confs, size_t n, char *err, size_t errlen)
{
  if (validate(confs, n, err, errlen) < 0)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    const char *path = sqlite_path(confs[i].uri);
    int r = stat(path, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EISDIR;
    if (r < 0) {
      snprintf(err, errlen, "datasource %s: \"%s\": %s", confs[i].name, path,
               r == -EISDIR ? "not a regular file" : strerror(-r));
      return -EINVAL;
    }
  }
  return 0;
}

struct luam_ds *luam_ds_new(const struct luam_ds_conf *confs, size_t n, unsigned threads,
                            char *err, size_t errlen)
{
  if (validate(confs, n, err, errlen) < 0)
    return NULL;
  struct luam_ds *ds = util_xcalloc(1, sizeof *ds);
  ds->n = n;
  ds->confs = util_xcalloc(n ? n : 1, sizeof *ds->confs);
  ds->paths = util_xcalloc(n ? n : 1, sizeof *ds->paths);
  ds->names = util_xcalloc(n ? n : 1, sizeof *ds->names);
  ds->uris = util_xcalloc(n ? n : 1, sizeof *ds->uris);
  for (size_t i = 0; i < n; i++) {
    ds->confs[i] = confs[i];
    ds->confs[i].name = ds->names[i] = util_xstrdup(confs[i].name);
    ds->confs[i].uri = ds->uris[i] = util_xstrdup(confs[i].uri);
    ds->paths[i] = util_xstrdup(sqlite_path(confs[i].uri));
  }
  pthread_mutex_init(&ds->mu, NULL);
  pthread_cond_init(&ds->cv, NULL);
  if (threads == 0)
    threads = DS_DEFAULT_THREADS;
  if (threads > DS_MAX_THREADS)
    threads = DS_MAX_THREADS;
  for (unsigned t = 0; t < threads; t++) {
    int rc = pthread_create(&ds->threads[t], NULL, pool_main, ds);
    if (rc != 0) {
      snprintf(err, errlen, "datasource pool: %s", strerror(rc));
      luam_ds_free(ds);
      return NULL;
    }
    ds->nthreads++;
  }
  return ds;
}

void luam_ds_free(struct luam_ds *ds)
{
  if (!ds)
    return;
  pthread_mutex_lock(&ds->mu);
  ds->stopping = 1;
  pthread_cond_broadcast(&ds->cv);
  pthread_mutex_unlock(&ds->mu);
  for (unsigned t = 0; t < ds->nthreads; t++)
    pthread_join(ds->threads[t], NULL);
  /* With no thread (creation failed) the queue may still hold jobs. */
  while (ds->head) {
    struct luam_job *job = ds->head;
    ds->head = job->next;
    job_fail(job, ds->confs[job->ds].name, "shutting down");
    deliver_locked(job);
  }
  pthread_mutex_destroy(&ds->mu);
  pthread_cond_destroy(&ds->cv);
  for (size_t i = 0; i < ds->n; i++) {
    free(ds->names[i]);
    free(ds->uris[i]);
    free(ds->paths[i]);
  }
  free(ds->names);
  free(ds->uris);
  free(ds->confs);
  free(ds->paths);
  free(ds);
}

int luam_ds_find(const struct luam_ds *ds, const char *name)
{
  if (!ds || !name)
    return -1;
  for (size_t i = 0; i < ds->n; i++)
    if (strcmp(ds->confs[i].name, name) == 0)
      return (int)i;
  return -1;
}

const struct luam_ds_conf *luam_ds_conf_at(const struct luam_ds *ds, int idx)
{
  return &ds->confs[idx];
}

unsigned long luam_ds_queries(struct luam_ds *ds)
{
  pthread_mutex_lock(&ds->mu);
  unsigned long q = ds->queries;
  pthread_mutex_unlock(&ds->mu);
  return q;
}

void luam_ds_submit(struct luam_ds *ds, struct luam_job *job)
{
  pthread_mutex_lock(&ds->mu);
  FIFO_PUSH(ds->head, ds->tail, job);
  pthread_cond_signal(&ds->cv);
  pthread_mutex_unlock(&ds->mu);
}

void luam_ds_orphan(struct luam_ds *ds, struct luam_job *job)
{
  pthread_mutex_lock(&ds->mu);
  job->owner = NULL;
  pthread_mutex_unlock(&ds->mu);
}
