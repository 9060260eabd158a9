# Records agent traffic for testdata/openssh_capture.txt: python3 capture_agent.py LISTEN_SOCK AGENT_SOCK LOG.
# Each request/response pair is logged as hex, with its length prefix.
import socket, sys, os, struct, threading
listen, target, log = sys.argv[1], sys.argv[2], sys.argv[3]
if os.path.exists(listen): os.unlink(listen)
srv = socket.socket(socket.AF_UNIX); srv.bind(listen); srv.listen(5)
lock = threading.Lock()
def recv_msg(s):
    h = b''
    while len(h) < 4:
        c = s.recv(4-len(h))
        if not c: return None
        h += c
    n = struct.unpack('>I', h)[0]; b = b''
    while len(b) < n:
        c = s.recv(n-len(b))
        if not c: return None
        b += c
    return h+b
def handle(c, idx):
    u = socket.socket(socket.AF_UNIX); u.connect(target)
    while True:
        req = recv_msg(c)
        if req is None: break
        u.sendall(req); resp = recv_msg(u)
        with lock:
            with open(log,'a') as f: f.write(f"conn{idx} REQ {req.hex()}\nconn{idx} RESP {resp.hex()}\n")
        c.sendall(resp)
    c.close(); u.close()
i=0
while True:
    c,_ = srv.accept(); i+=1
    threading.Thread(target=handle, args=(c,i), daemon=True).start()
