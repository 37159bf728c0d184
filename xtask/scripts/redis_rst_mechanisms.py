#!/usr/bin/env python3
"""Which ways of making a real redis-server drop its clients produce RSTs that the kernel's
tcp:tcp_send_reset / tcp:tcp_receive_reset tracepoints (what the agent hooks) count.

Run as root, under the shared lock (it opens sockets and changes nftables):
    flock /work/locks/run.lock python3 xtask/scripts/redis_rst_mechanisms.py
Uses a private tracefs instance and a private redis-server on a free loopback port.
"""
import os, re, socket, subprocess, time

T = "/sys/kernel/tracing/instances/ks-redis-rst"


def w(p, v):
    open(f"{T}/{p}", "w").write(v)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def run(mode):
    port = free_port()
    d = f"/tmp/ks-redis-rst-{os.getpid()}"
    os.makedirs(d, exist_ok=True)
    rp = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", d, "--logfile", f"{d}/redis.log"])
    time.sleep(0.3)
    cli = lambda *a: subprocess.run(["redis-cli", "-p", str(port), *a], capture_output=True, text=True).stdout.strip()
    held = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"PING\r\n"); s.recv(100); held.append(s)
    w("trace", "")
    seen = {"ECONNRESET": 0, "error reply": 0, "EOF": 0}
    n = 0
    if mode == "maxclients":
        cli("config", "set", "maxclients", "1")
        for _ in range(50):
            n += 1
            s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"PING\r\n")
            try:
                seen["error reply" if b"max number" in s.recv(200) else "EOF"] += 1
            except ConnectionResetError:
                seen["ECONNRESET"] += 1
            s.close()
    elif mode == "SIGSTOP+commands+SIGKILL":
        os.kill(rp.pid, 19)
        for s in held: s.sendall(b"PING\r\n")
        time.sleep(0.2); os.kill(rp.pid, 9); time.sleep(0.2)
    elif mode == "CLIENT KILL":
        cli("client", "kill", "type", "normal")
    elif mode == "nft reject with tcp reset":
        subprocess.run(["nft", "-f", "-"], text=True, check=True, input=(
            "add table inet ks_rst\nadd chain inet ks_rst input { type filter hook input priority 0; policy accept; }\n"
            f"add rule inet ks_rst input tcp dport {port} reject with tcp reset\n"))
        for s in held: s.sendall(b"PING\r\n")
    if mode != "maxclients":
        for s in held:
            n += 1
            try:
                seen["EOF" if s.recv(100) == b"" else "error reply"] += 1
            except ConnectionResetError:
                seen["ECONNRESET"] += 1
    if mode.startswith("nft"):
        subprocess.run(["nft", "delete", "table", "inet", "ks_rst"])
    time.sleep(0.3)
    ev = [l for l in open(f"{T}/trace").read().splitlines() if "tcp_" in l and str(port) in l]
    sent = sum("tcp_send_reset" in l for l in ev)
    recv = sum("tcp_receive_reset" in l for l in ev)
    reasons = sorted(set(re.findall(r"reason=(\w+)", "\n".join(ev))))
    print(f"| {mode} | {n} | {sent} | {recv} | {', '.join(reasons) or '-'} | "
          + ", ".join(f"{k} {v}" for k, v in seen.items() if v) + " |")
    try: rp.kill()
    except ProcessLookupError: pass
    rp.wait()


os.makedirs(T, exist_ok=True)
try:
    w("events/tcp/tcp_send_reset/enable", "1"); w("events/tcp/tcp_receive_reset/enable", "1")
    print("| mechanism | connections | tcp_send_reset | tcp_receive_reset | reasons | client saw |")
    print("|---|---:|---:|---:|---|---|")
    for m in ["maxclients", "SIGSTOP+commands+SIGKILL", "CLIENT KILL", "nft reject with tcp reset"]:
        run(m)
finally:
    w("events/tcp/tcp_send_reset/enable", "0"); w("events/tcp/tcp_receive_reset/enable", "0")
    os.rmdir(T)
