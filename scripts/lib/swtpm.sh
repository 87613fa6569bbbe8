# shellcheck shell=bash
# Sourced by scripts that need a throw-away software TPM.
# start_swtpm DIR: starts swtpm with its state in DIR on two consecutive free
# loopback ports (the swtpm TCTI always uses port+1 as the control channel),
# waits until it listens, and exports AVER_TCTI and SWTPM_PID.
start_swtpm() {
  local dir=$1 port
  mkdir -p "$dir"
  port=$(python3 -c 'import socket
for base in range(20000, 60000, 7):
    try:
        s = [socket.socket(), socket.socket()]
        s[0].bind(("127.0.0.1", base)); s[1].bind(("127.0.0.1", base + 1))
    except OSError:
        continue
    print(base); break')
  swtpm socket --tpm2 --tpmstate dir="$dir" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port="$((port + 1))",bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear &
  SWTPM_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  export AVER_TCTI="swtpm:host=127.0.0.1,port=$port" SWTPM_PID
}

# manufacture_swtpm DIR CA_DIR: prepares swtpm state in DIR the way a TPM
# vendor would: swtpm_setup creates the endorsement keys and writes an RSA
# 2048 EK certificate into NV 0x01c00002, issued by swtpm_localca, which
# creates a root CA (CA_DIR/swtpm-localca-rootca-cert.pem) and an
# intermediate below it (CA_DIR/issuercert.pem) on first use.
manufacture_swtpm() {
  local dir=$1 ca=$2
  mkdir -p "$dir" "$ca"
  cat >"$ca/swtpm-localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
  printf -- '--platform-manufacturer aver-demo\n--platform-version 1.0\n--platform-model demo\n' \
    >"$ca/swtpm-localca.options"
  cat >"$ca/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca || echo /usr/share/swtpm/swtpm-localca)
create_certs_tool_config = $ca/swtpm-localca.conf
create_certs_tool_options = $ca/swtpm-localca.options
active_pcr_banks = sha256
CONF
  swtpm_setup --tpm2 --tpmstate "$dir" --create-ek-cert --overwrite \
    --config "$ca/swtpm_setup.conf" --logfile "$ca/swtpm_setup.log" >/dev/null
}
