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
