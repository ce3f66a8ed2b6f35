/* seal.c owns the spool's secret key and sealing secret context values at
 * rest (issue 18 item 1): a per-message secret (outbound_smtp_auth_pass and
 * the configured secret keys) is written to the ATTR record encrypted with
 * AES-256-GCM, bound to its message's id (the additional authenticated
 * data), so it survives a restart and can never be read back as another
 * message's. The key is 32 random bytes in a file outside the spool
 * (Spool_Secret_Key_File), created 0600 when missing and refused when
 * group or others may read it, or another user owns it (unless the engine
 * starts as root); <spoolbase>/seal.check
 * holds a sealed known text, so a missing or different key is a clear
 * start-up error instead of secrets that silently fail to open.
 *
 * Must never: write a secret or the key anywhere but where said above, log,
 * or keep plaintext in a buffer it does not wipe. Threads: seal_load in
 * spool_open; seal_put / seal_open from any thread (no shared state but
 * the read-only key). */
#include "spool_int.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "secmem.h"

#define SEAL_NONCE 12u
#define SEAL_TAG 16u
#define SEAL_CHECK_TEXT "impetus spool secret key check v1"
#define SEAL_CHECK_NAME "seal.check"

/* AES-256-GCM of pt[0, n) under key with aad; appends nonce | ct | tag to
 * out. Returns 0 or -EIO (OpenSSL failed). */
static int gcm_seal(const uint8_t *key, const uint8_t *aad, size_t aadlen, const uint8_t *pt,
                    size_t n, struct buf *out)
{
  uint8_t nonce[SEAL_NONCE];
  if (RAND_bytes(nonce, sizeof nonce) != 1)
    return -EIO;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (!c)
    return -EIO;
  buf_reserve(out, out->len + SEAL_NONCE + n + SEAL_TAG);
  uint8_t *o = out->data + out->len;
  memcpy(o, nonce, SEAL_NONCE);
  int l = 0, l2 = 0, ok = EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
                        (aadlen == 0 || EVP_EncryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1) &&
                        EVP_EncryptUpdate(c, o + SEAL_NONCE, &l, pt, (int)n) == 1 &&
                        EVP_EncryptFinal_ex(c, o + SEAL_NONCE + l, &l2) == 1 &&
                        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, SEAL_TAG,
                                            o + SEAL_NONCE + n) == 1;
  EVP_CIPHER_CTX_free(c);
  if (!ok || (size_t)(l + l2) != n)
    return -EIO;
  out->len += SEAL_NONCE + n + SEAL_TAG;
  return 0;
}

/* Open what gcm_seal wrote: the plaintext is appended to out. Returns 0,
 * or -EKEYREJECTED when the tag does not verify (another key, another
 * message, or damage). */
static int gcm_open(const uint8_t *key, const uint8_t *aad, size_t aadlen, const uint8_t *blob,
                    size_t len, struct buf *out)
{
  if (len < SEAL_NONCE + SEAL_TAG)
    return -EKEYREJECTED;
  size_t n = len - SEAL_NONCE - SEAL_TAG;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (!c)
    return -EIO;
  buf_reserve(out, out->len + n + 1);
  uint8_t *o = out->data + out->len;
  uint8_t tag[SEAL_TAG];
  memcpy(tag, blob + SEAL_NONCE + n, SEAL_TAG);
  int l = 0, l2 = 0, ok = EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, blob) == 1 &&
                        (aadlen == 0 || EVP_DecryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1) &&
                        EVP_DecryptUpdate(c, o, &l, blob + SEAL_NONCE, (int)n) == 1 &&
                        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, SEAL_TAG, tag) == 1 &&
                        EVP_DecryptFinal_ex(c, o + l, &l2) == 1;
  EVP_CIPHER_CTX_free(c);
  if (!ok) {
    explicit_bzero(o, n);
    return -EKEYREJECTED;
  }
  out->len += n;
  return 0;
}

static void aad_of(const struct spool_msg *m, uint8_t aad[10])
{
  for (int i = 0; i < 8; i++)
    aad[i] = (uint8_t)(m->id >> (8 * i));
  aad[8] = (uint8_t)m->node;
  aad[9] = (uint8_t)(m->node >> 8);
}

/* Read the key file, or create it when missing and the spool has no check
 * file yet (a new spool). Returns 0 or -errno with err set. */
static int key_file(struct spool *sp, const char *path, bool *created, char *err, size_t errlen)
{
  *created = false;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    if (faccessat(sp->base_fd, SEAL_CHECK_NAME, F_OK, 0) == 0) {
      snprintf(err, errlen,
               "secret key file %s is missing, but this spool holds secrets sealed with a key "
               "(" SEAL_CHECK_NAME "): restore the key file, or remove " SEAL_CHECK_NAME
               " to start a new key (the queued messages' secrets are then lost)",
               path);
      return -ENOKEY;
    }
    uint8_t k[32];
    if (RAND_bytes(k, sizeof k) != 1) {
      snprintf(err, errlen, "cannot make a secret key: no randomness");
      return -EIO;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    int r = fd < 0 ? -errno : write_all(fd, k, sizeof k, 0);
    if (r == 0 && fsync(fd) < 0)
      r = -errno;
    explicit_bzero(k, sizeof k);
    if (fd >= 0)
      close(fd);
    if (r < 0) {
      if (fd >= 0)
        unlink(path);
      snprintf(err, errlen, "cannot create secret key file %s: %s", path, strerror(-r));
      return r;
    }
    *created = true;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  }
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "cannot open secret key file %s: %s", path, strerror(e));
    return -e;
  }
  struct stat st;
  int r = 0;
  if (fstat(fd, &st) < 0) {
    r = -errno;
    snprintf(err, errlen, "secret key file %s: %s", path, strerror(-r));
  } else if (!S_ISREG(st.st_mode) || st.st_size != 32) {
    r = -EINVAL;
    snprintf(err, errlen, "secret key file %s is not a 32-byte regular file", path);
  } else if (st.st_mode & 077) {
    r = -EPERM;
    snprintf(err, errlen, "secret key file %s may be read by others (mode %04o): chmod 600 it",
             path, (unsigned)(st.st_mode & 07777));
  } else if (st.st_uid != geteuid() && geteuid() != 0) {
    /* (root starts the engine and hands the spool's surroundings to User,
     * which may include this file: any owner then, as long as only it may
     * read the file) */
    r = -EPERM;
    snprintf(err, errlen, "secret key file %s belongs to uid %u, not to the engine's uid %u",
             path, (unsigned)st.st_uid, (unsigned)geteuid());
  } else if (pread(fd, sp->seal_key, 32, 0) != 32) {
    r = -EIO;
    snprintf(err, errlen, "cannot read secret key file %s", path);
  }
  close(fd);
  return r;
}

int seal_load(struct spool *sp, const char *path, char *err, size_t errlen)
{
  sp->seal_key = secmem_xalloc(32); /* out of core dumps, wiped when freed */
  bool created;
  int r = key_file(sp, path, &created, err, errlen);
  if (r < 0)
    return r;
  struct buf b = {0};
  int fd = openat(sp->base_fd, SEAL_CHECK_NAME, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) {
    uint8_t blob[256];
    ssize_t n = pread(fd, blob, sizeof blob, 0);
    close(fd);
    r = n < 0 ? -EIO : gcm_open(sp->seal_key, NULL, 0, blob, (size_t)n, &b);
    if (r == 0 && (b.len != strlen(SEAL_CHECK_TEXT) || memcmp(b.data, SEAL_CHECK_TEXT, b.len)))
      r = -EKEYREJECTED;
    if (r < 0)
      snprintf(err, errlen,
               "secret key file %s is not the key this spool's secrets were sealed with "
               "(" SEAL_CHECK_NAME " does not open with it)",
               path);
  } else if (errno == ENOENT) {
    r = gcm_seal(sp->seal_key, NULL, 0, (const uint8_t *)SEAL_CHECK_TEXT, strlen(SEAL_CHECK_TEXT),
                 &b);
    fd = r < 0 ? -1 : openat(sp->base_fd, SEAL_CHECK_NAME ".tmp",
                             O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      r = write_all(fd, b.data, b.len, 0);
      if (r == 0 && fsync(fd) < 0)
        r = -errno;
      close(fd);
      if (r == 0 && renameat(sp->base_fd, SEAL_CHECK_NAME ".tmp", sp->base_fd,
                             SEAL_CHECK_NAME) < 0)
        r = -errno;
      if (r == 0 && fsync(sp->base_fd) < 0)
        r = -errno;
    } else if (r == 0) {
      r = -errno;
    }
    if (r < 0)
      snprintf(err, errlen, "cannot write " SEAL_CHECK_NAME ": %s", strerror(-r));
  } else {
    r = -errno;
    snprintf(err, errlen, "cannot read " SEAL_CHECK_NAME ": %s", strerror(-r));
  }
  buf_done(&b, 0);
  (void)created;
  return r;
}

void seal_done(struct spool *sp)
{
  if (sp->seal_key)
    secmem_free(sp->seal_key);
  sp->seal_key = NULL;
}

/* The secret entries of the message's dictionaries (and of its in-memory
 * side dictionary), as u32 n, then n x (u8 'm'|'c', str key, str value). */
static uint32_t secrets_put(const struct spool_msg *m, struct buf *pt)
{
  uint32_t n = 0;
  put_u32(pt, 0);
  const struct ctx *src[3] = {m->mess, m->conn, m->secrets};
  for (int i = 0; i < 3; i++) {
    struct ctx_iter it = {0};
    const char *k, *v;
    size_t kl, vl;
    unsigned fl;
    while (src[i] && ctx_nextn(src[i], &it, &k, &kl, &v, &vl, &fl)) {
      if (i < 2 && !(fl & CTX_F_SECRET))
        continue;
      char which = i == 0 ? 'm' : i == 1 ? 'c' : k[0];
      if (i == 2) { /* side dictionary keys carry their dictionary's letter */
        k++;
        kl--;
      }
      put_u8(pt, (uint8_t)which);
      put_u32(pt, (uint32_t)kl);
      buf_append(pt, k, kl);
      put_u32(pt, (uint32_t)vl);
      buf_append(pt, v, vl);
      n++;
    }
  }
  patch_u32(pt->data, n);
  return n;
}

void seal_put(const struct spool *sp, struct buf *b, const struct spool_msg *m)
{
  if (!sp || !sp->seal_key)
    return;
  struct buf pt = {0};
  if (secrets_put(m, &pt) > 0) {
    uint8_t aad[10];
    aad_of(m, aad);
    size_t at = b->len;
    put_u32(b, 0);
    if (gcm_seal(sp->seal_key, aad, sizeof aad, pt.data, pt.len, b) == 0)
      patch_u32(b->data + at, (uint32_t)(b->len - at - 4));
    else
      b->len = at; /* no sealed part: as before this existed (the secret is lost on restart) */
  }
  explicit_bzero(pt.data, pt.cap);
  buf_done(&pt, 0);
}

int seal_apply(const struct spool *sp, struct spool_msg *m, const uint8_t *blob, size_t len)
{
  if (!sp || !sp->seal_key)
    return -ENOKEY;
  uint8_t aad[10];
  aad_of(m, aad);
  struct buf pt = {0};
  int r = gcm_open(sp->seal_key, aad, sizeof aad, blob, len, &pt);
  if (r == 0) {
    struct rd rd = {pt.data, pt.data + pt.len, false};
    uint32_t n = get_u32(&rd);
    for (uint32_t i = 0; i < n && !rd.bad; i++) {
      uint8_t which = get_u8(&rd);
      uint32_t kl, vl;
      const char *k = get_str(&rd, &kl);
      const char *v = get_str(&rd, &vl);
      if (rd.bad || !k || !v)
        break;
      struct ctx *d = which == 'c' ? m->conn : m->mess;
      if (d)
        ctx_setn(d, k, kl, v, vl, CTX_F_SECRET);
    }
    if (rd.bad)
      r = -EBADMSG;
  }
  explicit_bzero(pt.data, pt.cap);
  buf_done(&pt, 0);
  return r;
}
