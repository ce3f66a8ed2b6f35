# pf_instance.sh: sourced by compare.sh and interop_bdat.sh. A private
# Postfix instance on 127.0.0.1 that relays everything to a sink.
#   pf_instance PF QUEUE_DIR SMTPD_PORT RELAY_PORT HOSTNAME [MAIN_CF_LINES]
# writes PF/etc/main.cf and master.cf (smtpd on 127.0.0.1:SMTPD_PORT, log in
# PF/maillog), fixes permissions and checks the configuration. The caller
# starts and stops it with `postfix -c PF/etc start|stop`.
pf_instance() {
  local pf=$1 queue=$2 smtpd_port=$3 relay_port=$4 name=$5 extra=${6:-}
  mkdir -p "$pf/etc" "$queue" "$pf/data"
  chown postfix "$pf/data"
  cat >"$pf/etc/main.cf" <<CF
compatibility_level = 3.6
config_directory = $pf/etc
queue_directory = $queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = $name
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$relay_port
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file_prefixes = $pf
maillog_file = $pf/maillog
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C
biff = no
$extra
CF
  cat >"$pf/etc/master.cf" <<CF
127.0.0.1:$smtpd_port inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
proxywrite unix - - n -    1 proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
CF
  /usr/sbin/postfix -c "$pf/etc" check >/dev/null 2>&1 || /usr/sbin/postfix -c "$pf/etc" set-permissions >/dev/null 2>&1 || true
  /usr/sbin/postfix -c "$pf/etc" check
}
