#!/bin/sh
# The SIGKILL half of integration/lib/cleanup.ts: started detached by a test process with a pipe on
# stdin whose only writer is that process. When the pipe closes (the process ended, however) this
# removes what the ledger ($1) still lists: processes (only while PID and start time still match),
# then links, then netns, then directories — the order cleanup.ts uses. Run with stdin closed it
# replays an orphaned ledger at once.
# Ledger lines (tab-separated): "+ ID KIND FIELD..." registers, "- ID" releases.
ledger=$1
cat >/dev/null 2>&1
[ -f "$ledger" ] || exit 0
tab=$(printf '\t')
for kind in proc link netns dir; do
  awk -F'\t' -v k="$kind" '
    $1 == "+" { live[$2] = $0; order[++n] = $2 }
    $1 == "-" { delete live[$2] }
    END { for (i = 1; i <= n; i++) if (order[i] in live) { split(live[order[i]], f, "\t"); if (f[3] == k) print f[4] "\t" f[5] } }
  ' "$ledger" | while IFS="$tab" read -r a b; do
    [ -n "$a" ] || continue
    case $kind in
      proc) [ -n "$b" ] && [ "$(sed 's/.*) //' "/proc/$a/stat" 2>/dev/null | cut -d' ' -f20)" = "$b" ] && kill -9 "$a" ;;
      link) if [ -n "$b" ]; then nsenter --net="$b" ip link del "$a"; else ip link del "$a"; fi ;;
      netns) ip netns del "$a" ;;
      dir) case $a in /?*/*) rm -rf -- "$a" ;; esac ;;
    esac
  done >/dev/null 2>&1
  # A killed process is gone a moment later; links and netns it held go with it.
  [ "$kind" = proc ] && sleep 0.2
done
rm -f "$ledger"
