#!/usr/bin/env bash
# A cluster CA and the certificates the flow relay and the nodes' observers use (TLS on the agents'
# --observer-address, mutual: the relay shows a client certificate, the agents trust only this CA).
#
#   scripts/cluster-certs.sh OUTDIR CLUSTER [NODE=IP ...]
#
# OUTDIR/ca.pem, ca.key       the cluster CA (kept when it exists: run again to add nodes)
# OUTDIR/NODE.pem, NODE.key   a node's observer: DNS name NODE.CLUSTER.observer.membrane (what the
#                             relay checks) and the node's IP
# OUTDIR/relay.pem, relay.key the relay's certificate: its client certificate towards the nodes and,
#                             on --listen-address, its server certificate (DNS name
#                             relay.CLUSTER.observer.membrane)
# OUTDIR/client.pem, client.key a client certificate for `membrane observe` (or hubble) against the relay
# Agent:  --observer-address 0.0.0.0:4244 --observer-tls-cert-file NODE.pem --observer-tls-key-file NODE.key
#         --observer-tls-client-ca-files ca.pem
# Relay:  --tls-ca-file ca.pem --tls-client-cert-file relay.pem --tls-client-key-file relay.key
#         [--listen-address 0.0.0.0:4245 --tls-server-cert-file relay.pem --tls-server-key-file relay.key
#          --tls-server-client-ca-file ca.pem]
# CLI:    membrane observe --server RELAY:4245 --tls-ca-cert-files ca.pem --tls-client-cert-file client.pem
#         --tls-client-key-file client.key --tls-server-name relay.CLUSTER.observer.membrane
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 OUTDIR CLUSTER [NODE=IP ...]" >&2; exit 2; fi
out=$1 cluster=$2
shift 2
mkdir -p "$out"
umask 077
cd "$out"

if [[ ! -f ca.key || ! -f ca.pem ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=membrane $cluster cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
fi

# sign NAME COMMON_NAME EXTENSIONS
sign() {
  local name=$1 cn=$2 ext=$3 csr
  csr=$(mktemp)
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$csr"
  openssl x509 -req -in "$csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile <(printf '%b' "$ext") -out "$name.pem" 2>/dev/null
  rm -f "$csr"
}

for spec in "$@"; do
  node=${spec%%=*} ip=${spec#*=}
  if [[ -z "$node" || -z "$ip" || "$node" == "$spec" ]]; then echo "$0: \"$spec\" is not NODE=IP" >&2; exit 2; fi
  name="$node.$cluster.observer.membrane"
  sign "$node" "$name" "subjectAltName=DNS:$name,IP:$ip\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"
done
[[ -f relay.pem ]] || sign relay "relay.$cluster.observer.membrane" \
  "subjectAltName=DNS:relay.$cluster.observer.membrane\nextendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature"
[[ -f client.pem ]] || sign client "client.$cluster.observer.membrane" "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature"
chmod 0644 ./*.pem
echo "certificates for cluster $cluster in $out"
